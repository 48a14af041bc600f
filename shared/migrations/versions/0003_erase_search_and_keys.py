"""batches keep no search text and no Idempotency-Key in clear

Revision ID: 0003_erase_search_and_keys
Revises: 0002_batch_cancel_reason
Create Date: 2026-11-29

A filter's search text (often an email or a name) was kept in
`batches.selection`, and the client's Idempotency-Key as it was sent; both
outlived a learner's erasure (issue #12 item 1). New batches keep neither
(producer/submit.py, producer/idempotency.py); this rewrites the old ones:
the search text becomes "[not kept]", each key its HMAC-SHA256 under the
key derived from SIGNING_KEY and the body's fingerprint (`request_hash`, a
plain SHA-256 of a body that can quote an email) its HMAC under the same key,
so a client's retry of a recent request is still recognised; a batch without
a key keeps no fingerprint. Run it with the SIGNING_KEY the producers use (the migrate Job and
compose service get the same secret). There is no way back: downgrade leaves
the rows as they are.
"""

import hashlib
import hmac
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_erase_search_and_keys"
down_revision: str | None = "0002_batch_cancel_reason"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As producer/submit.py and producer/idempotency.py had them at this revision.
SEARCH_NOT_KEPT = "[not kept]"
PURPOSE = b"idempotency keys"

batches = sa.table(
    "batches",
    sa.column("id", sa.BigInteger),
    sa.column("selection", sa.JSON),
    sa.column("idempotency_key", sa.String),
    sa.column("request_hash", sa.String),
)


def _hashing_key() -> bytes:
    from shared.settings import Settings

    return hmac.digest(Settings().signing_key.encode(), PURPOSE, hashlib.sha256)


def _keyed(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def upgrade() -> None:
    connection = op.get_bind()
    key = None
    rows = connection.execute(
        sa.select(
            batches.c.id, batches.c.selection, batches.c.idempotency_key, batches.c.request_hash
        )
    ).all()
    for batch_id, selection, idempotency_key, request_hash in rows:
        changes: dict[str, object] = {}
        people = (selection or {}).get("filter")
        if isinstance(people, dict) and people.get("q") not in (None, SEARCH_NOT_KEPT):
            changes["selection"] = {**selection, "filter": {**people, "q": SEARCH_NOT_KEPT}}
        if idempotency_key:
            # Settings are read only when there is a key to hash.
            key = key or _hashing_key()
            changes["idempotency_key"] = _keyed(key, idempotency_key)
            changes["request_hash"] = _keyed(key, request_hash) if request_hash else None
        elif request_hash:
            changes["request_hash"] = None
        if changes:
            connection.execute(batches.update().where(batches.c.id == batch_id).values(**changes))


def downgrade() -> None:
    # The search texts and keys are gone for good; the rows stay as they are.
    pass
