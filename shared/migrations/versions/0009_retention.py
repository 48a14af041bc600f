"""what retention needs (#14 section 7)

Revision ID: 0009_retention
Revises: 0008_webhooks
Create Date: 2026-12-03
"""

from collections.abc import Sequence

revision: str = "0009_retention"
down_revision: str | None = "0008_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # placeholder: filled by the change it is named after


def downgrade() -> None:
    pass
