"""audit_log: token_id, and indexes for reading the trail newest first

Revision ID: 0004_audit_trail
Revises: 0003_erase_search_and_keys
Create Date: 2026-11-29

`GET /v1/audit` pages a school's trail by (school_id, id DESC), alone or
within one learner or one batch; each gets an index ending in `id`, so a
page is an index range, not a sort. `token_id` names the token of a
`token.issued` / `token.revoked` event. Nullable, no default: no row is
rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_audit_trail"
down_revision: str | None = "0003_erase_search_and_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.BigInteger(), nullable=True))
    op.drop_index("ix_audit_log_school_learner", table_name="audit_log")
    op.create_index(
        "ix_audit_log_school_learner", "audit_log", ["school_id", "learner_id", "id"], unique=False
    )
    op.create_index("ix_audit_log_school_id", "audit_log", ["school_id", "id"], unique=False)
    op.create_index("ix_audit_log_batch_id", "audit_log", ["batch_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_batch_id", table_name="audit_log")
    op.drop_index("ix_audit_log_school_id", table_name="audit_log")
    op.drop_index("ix_audit_log_school_learner", table_name="audit_log")
    op.create_index(
        "ix_audit_log_school_learner", "audit_log", ["school_id", "learner_id"], unique=False
    )
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.drop_column("token_id")
