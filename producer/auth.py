"""Bearer-token authentication. The token fixes the school and the acting admin."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from producer.deps import get_session
from shared.actions import Actor
from shared.models import ApiToken, Learner, LearnerStatus
from shared.tokens import hash_token

WRITE_SCOPE = "batches:write"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def current_actor(request: Request, session: Session = Depends(get_session)) -> Actor:
    """The admin behind `Authorization: Bearer <token>`; tokens anywhere else are ignored."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    digest = hash_token(token.strip())
    row = session.execute(
        select(
            ApiToken.token_hash,
            ApiToken.scopes,
            Learner.id,
            Learner.school_id,
            Learner.is_admin,
            Learner.status,
        )
        .join(Learner, Learner.id == ApiToken.learner_id)
        .where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise _unauthorized("invalid or revoked token")
    if row.status != LearnerStatus.ACTIVE or not row.is_admin:
        raise HTTPException(403, "this token does not belong to an active admin")
    if WRITE_SCOPE not in row.scopes.split():
        raise HTTPException(403, f"this token lacks the {WRITE_SCOPE} scope")
    return Actor(school_id=row.school_id, admin_id=row.id)
