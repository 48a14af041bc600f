"""the lease of a deletion's finalize message (#16)

Revision ID: 0011_deletion_lease
Revises: 0010_audit_from_items
Create Date: 2026-12-03

The reconciler now claims the learners whose deletion is due, a chunk of one
school at a time, and publishes one `finalize_deletion` message per chunk
(workers/deletion.py). `deletion_leased_until` is how long that message has:
a learner still `deleting` after it is claimed and published again.
`deletion_due_at` stays the time the grace period ended, which
`deletion_finalize_lag_seconds` reads. A nullable column without a default:
no table rewrite, and not indexed (the claim finds learners by
`ix_learners_deletion_due`), so setting it can be a HOT update.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_deletion_lease"
down_revision: str | None = "0010_audit_from_items"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("learners") as batch_op:
        batch_op.add_column(
            sa.Column("deletion_leased_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("learners") as batch_op:
        batch_op.drop_column("deletion_leased_until")
