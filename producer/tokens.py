"""API tokens: random, shown once, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared.models import ApiToken

PREFIX = "bat_"
READ_SCOPE = "batches:read"
WRITE_SCOPE = "batches:write"
ALL_SCOPES = f"{READ_SCOPE} {WRITE_SCOPE}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    session: Session,
    school_id: int,
    learner_id: int,
    label: str = "",
    scopes: str = ALL_SCOPES,
) -> str:
    """Store a new token for an admin and return it; it cannot be read back later."""
    token = PREFIX + secrets.token_urlsafe(32)
    session.execute(
        insert(ApiToken).values(
            school_id=school_id,
            learner_id=learner_id,
            token_hash=hash_token(token),
            label=label,
            scopes=scopes,
        )
    )
    return token
