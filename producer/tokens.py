"""API tokens: random, shown once, stored as SHA-256 only. Issuing and
revoking one is audited (`token.issued`, `token.revoked`) in the same
transaction; listing never shows the secret or its hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from shared.audit import Event, record
from shared.db import now
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
    issued_by: int | None = None,
) -> str:
    """Store a new token for an admin and return it; it cannot be read back
    later. `issued_by` is the admin who asked for it (None: an operator at
    the command line)."""
    token = PREFIX + secrets.token_urlsafe(32)
    token_id = session.execute(
        insert(ApiToken)
        .values(
            school_id=school_id,
            learner_id=learner_id,
            token_hash=hash_token(token),
            label=label,
            scopes=scopes,
        )
        .returning(ApiToken.id)
    ).scalar_one()
    record(
        session,
        school_id,
        Event.TOKEN_ISSUED,
        actor_id=issued_by,
        learner_id=learner_id,
        token_id=token_id,
    )
    return token


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: never the secret, never its hash."""

    id: int
    learner_id: int
    label: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def list_tokens(session: Session, school_id: int, include_revoked: bool = False) -> list[TokenInfo]:
    """The school's tokens, newest first."""
    query = select(
        ApiToken.id,
        ApiToken.learner_id,
        ApiToken.label,
        ApiToken.scopes,
        ApiToken.created_at,
        ApiToken.revoked_at,
    ).where(ApiToken.school_id == school_id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return [
        TokenInfo(
            id=row.id,
            learner_id=row.learner_id,
            label=row.label,
            scopes=row.scopes.split(),
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )
        for row in session.execute(query.order_by(ApiToken.id.desc()))
    ]


def revoke_token(session: Session, school_id: int, token_id: int, revoked_by: int | None) -> bool:
    """Revoke one of the school's tokens; False when the school has no such
    token (another school's id looks exactly like a missing one). Revoking a
    revoked token changes nothing and records nothing."""
    owner = session.scalar(
        select(ApiToken.learner_id).where(ApiToken.id == token_id, ApiToken.school_id == school_id)
    )
    if owner is None:
        return False
    revoked = (
        session.connection()
        .execute(
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                ApiToken.school_id == school_id,
                ApiToken.revoked_at.is_(None),
            )
            .values(revoked_at=now())
        )
        .rowcount
    )
    if revoked:
        record(
            session,
            school_id,
            Event.TOKEN_REVOKED,
            actor_id=revoked_by,
            learner_id=owner,
            token_id=token_id,
        )
    return True
