"""webhook endpoints, events and deliveries (#13 section 3)

Revision ID: 0008_webhooks
Revises: 0007_learner_external_id
Create Date: 2026-12-03
"""

from collections.abc import Sequence

revision: str = "0008_webhooks"
down_revision: str | None = "0007_learner_external_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # placeholder: filled by the change it is named after


def downgrade() -> None:
    pass
