"""batch_items layout for the hot path (#16)

Revision ID: 0010_item_layout
Revises: 0009_retention
Create Date: 2026-12-03
"""

from collections.abc import Sequence

revision: str = "0010_item_layout"
down_revision: str | None = "0009_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # placeholder: filled by the change it is named after


def downgrade() -> None:
    pass
