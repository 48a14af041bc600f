"""learners.last_invited_at (invitation cooldown, #14 section 4)

Revision ID: 0006_invite_cooldown
Revises: 0005_batch_retry_of
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_invite_cooldown"
down_revision: str | None = "0005_batch_retry_of"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: no row is rewritten. Invitations sent before the
    # upgrade do not count towards the cooldown.
    with op.batch_alter_table("learners") as batch_op:
        batch_op.add_column(sa.Column("last_invited_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("learners") as batch_op:
        batch_op.drop_column("last_invited_at")
