"""learners.last_invited_at (invitation cooldown, #14 section 4)

Revision ID: 0006_invite_cooldown
Revises: 0005_batch_retry_of
Create Date: 2026-12-03
"""

from collections.abc import Sequence

revision: str = "0006_invite_cooldown"
down_revision: str | None = "0005_batch_retry_of"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # placeholder: filled by the change it is named after


def downgrade() -> None:
    pass
