"""learners.external_id (callers' own identifiers, #13 section 1)

Revision ID: 0007_learner_external_id
Revises: 0006_invite_cooldown
Create Date: 2026-12-03
"""

from collections.abc import Sequence

revision: str = "0007_learner_external_id"
down_revision: str | None = "0006_invite_cooldown"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # placeholder: filled by the change it is named after


def downgrade() -> None:
    pass
