"""batches.cancel_reason: why a batch was cancelled

Revision ID: 0002_batch_cancel_reason
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_batch_cancel_reason"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row, and batches cancelled
    # before it simply have no recorded reason.
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("cancel_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_column("cancel_reason")
