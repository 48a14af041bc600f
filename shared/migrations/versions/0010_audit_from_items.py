"""batch items: an index of the pending ones only; the audit trail's cursor

Revision ID: 0010_audit_from_items
Revises: 0009_retention
Create Date: 2026-12-03

Two changes that take writes off the per-learner statement (#16):

- `ix_batch_items_batch_outcome` (batch, outcome, learner) got a new entry
  every time an item finished. `ix_batch_items_pending` (batch, learner)
  WHERE outcome = 'pending' holds only what the dispatcher reads (the
  window, the keyset, cancel, completion); a finished item leaves it.
- `batches.audited_through`: per-learner audit rows are now written from the
  finished items, set-based, by the dispatch loop (`shared.audit.
  record_finished_items`), no longer by the worker's statement. Batches that
  exist before this migration keep NULL there: their workers wrote their rows.

On PostgreSQL both indexes are built and dropped CONCURRENTLY, outside a
transaction: `batch_items` is the largest table, and a plain CREATE INDEX
would block every worker's write for as long as the build takes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_audit_from_items"
down_revision: str | None = "0009_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("outcome = 'pending'")


def upgrade() -> None:
    # 0 for every batch from now on, NULL for the batches already there.
    op.add_column(
        "batches",
        sa.Column("audited_through", sa.BigInteger(), server_default=sa.text("0"), nullable=True),
    )
    op.execute("UPDATE batches SET audited_through = NULL")
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_batch_items_pending",
            "batch_items",
            ["batch_id", "learner_id"],
            unique=False,
            postgresql_where=PENDING,
            sqlite_where=PENDING,
            postgresql_concurrently=postgresql,
        )
        op.drop_index(
            "ix_batch_items_batch_outcome",
            table_name="batch_items",
            postgresql_concurrently=postgresql,
        )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_batch_items_batch_outcome",
            "batch_items",
            ["batch_id", "outcome", "learner_id"],
            unique=False,
            postgresql_concurrently=postgresql,
        )
        op.drop_index(
            "ix_batch_items_pending",
            table_name="batch_items",
            postgresql_concurrently=postgresql,
        )
    op.drop_column("batches", "audited_through")
