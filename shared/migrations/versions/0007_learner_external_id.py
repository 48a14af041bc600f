"""learners.external_id (callers' own identifiers, #13 section 1)

Revision ID: 0007_learner_external_id
Revises: 0006_invite_cooldown
Create Date: 2026-12-03

A school's own identifier for a learner (its student information system's
id), unique within the school, so an upstream service can select learners
by `{"external_ids": [...]}`. Nullable, no default: no row is rewritten.
Selecting by `{"emails": [...]}` matches case-insensitively; the index on
(school_id, lower(email)) makes each a lookup, not a scan of the school.
Both indexes are built under the usual lock of CREATE INDEX (writes to
learners wait while it builds: seconds for a million learners).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_learner_external_id"
down_revision: str | None = "0006_invite_cooldown"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("learners") as batch_op:
        batch_op.add_column(sa.Column("external_id", sa.String(255), nullable=True))
        batch_op.create_unique_constraint(
            "uq_learners_school_external_id", ["school_id", "external_id"]
        )
    op.create_index(
        "ix_learners_school_email_lower",
        "learners",
        ["school_id", sa.text("lower(email)")],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_learners_school_email_lower", table_name="learners")
    with op.batch_alter_table("learners") as batch_op:
        batch_op.drop_constraint("uq_learners_school_external_id", type_="unique")
        batch_op.drop_column("external_id")
