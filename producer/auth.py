"""Bearer-token authentication and scopes. The token fixes the school and the
acting admin; tokens are read from the `Authorization` header only."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from producer.deps import get_session
from producer.tokens import READ_SCOPE, WRITE_SCOPE, hash_token
from shared.actions import Actor
from shared.models import ApiToken, Learner, LearnerStatus


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _authenticate(request: Request, session: Session, scope: str) -> Actor:
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
    request.app.state.rate.check(digest[:32])
    if row.status != LearnerStatus.ACTIVE or not row.is_admin:
        raise HTTPException(403, "this token does not belong to an active admin")
    scopes = row.scopes.split()
    # Writing implies reading.
    if scope not in scopes and not (scope == READ_SCOPE and WRITE_SCOPE in scopes):
        raise HTTPException(403, f"this token lacks the {scope} scope")
    return Actor(school_id=row.school_id, admin_id=row.id)


def requires(scope: str) -> Callable[..., Actor]:
    def actor(request: Request, session: Session = Depends(get_session)) -> Actor:
        return _authenticate(request, session, scope)

    return actor


reader = requires(READ_SCOPE)
writer = requires(WRITE_SCOPE)
