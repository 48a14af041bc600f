"""batches.retry_of: the batch whose failed items a batch retries

Revision ID: 0005_batch_retry_of
Revises: 0004_audit_trail
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_batch_retry_of"
down_revision: str | None = "0004_audit_trail"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: no row is rewritten; an original batch that is
    # removed leaves its retries standing, unlinked.
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(
            sa.Column(
                "retry_of", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.create_foreign_key(
            "fk_batches_retry_of_batches", "batches", ["retry_of"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_constraint("fk_batches_retry_of_batches", type_="foreignkey")
        batch_op.drop_column("retry_of")
