"""Bearer-token authentication and scopes. The token fixes the school and the
acting admin; tokens are read from the `Authorization` header only."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Row, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from producer.deps import get_session
from producer.tokens import READ_SCOPE, WRITE_SCOPE, hash_token
from shared.actions import Actor
from shared.models import ApiToken, Learner, LearnerStatus

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _token_row(request: Request, session: Session) -> Row:
    """The valid token's row and its admin; 401 otherwise. Each failure counts
    against the client's address, which past AUTH_FAILURES_PER_MINUTE gets
    429 before its token is even looked at (no guessing at full speed)."""
    failures = request.app.state.rate.auth_failures
    address = request.client.host if request.client else "unknown"
    failures.refuse_if_spent(address)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        failures.count(address)
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
        failures.count(address)
        raise _unauthorized("invalid or revoked token")
    return row


def _authenticate(request: Request, session: Session, scope: str) -> Actor:
    row = _token_row(request, session)
    rate = request.app.state.rate
    rate.token.check(row.token_hash[:32])
    rate.school.check(str(row.school_id))
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


class TokenBeforeBody:
    """Check the token of a request with a body before anything reads it.

    FastAPI reads and parses a route's body before it resolves the route's
    dependencies, authentication among them: without this, a stranger's
    4 MB body is received and parsed before the 401. Scopes and rates are
    still checked by the route's dependency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            request = Request(scope)
            try:
                await run_in_threadpool(self._check, request)
            except HTTPException as refused:
                response = JSONResponse(
                    {"detail": refused.detail},
                    status_code=refused.status_code,
                    headers=refused.headers,
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _check(request: Request) -> None:
        with request.app.state.runtime.sessions() as session:
            _token_row(request, session)
