"""what retention needs (#14 section 7)

Revision ID: 0009_retention
Revises: 0008_webhooks
Create Date: 2026-12-03

Retention (workers/retention.py) removes finished batches; each removed
batch row unlinks the batches that retried it (`retry_of`, ON DELETE SET
NULL), which without an index is a scan of `batches` per removed batch. The
other lookups it makes have their index already: items by the primary key
(batch_id, learner_id), invitations by `uq_invitations_batch_learner`,
expired batches by `ix_batches_status`, the audit trail's oldest rows by its
primary key.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_retention"
down_revision: str | None = "0008_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_batches_retry_of", "batches", ["retry_of"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_batches_retry_of", table_name="batches")
