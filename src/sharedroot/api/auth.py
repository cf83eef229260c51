"""Who is asking: an API token (`Authorization: Bearer`), or a browser's signed session.

A browser signs in once with a token and gets a session cookie signed with the
server's key (server/session.key). The cookie names the token, not its secret, and
each request looks the token up again: revoking it ends its sessions too. A request
that the cookie authenticates and that changes something must carry the session's
CSRF value in `X-CSRF-Token` (or a `csrf_token` form field): another site's page can
make the browser send the cookie, but cannot read the value to send with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request

from sharedroot.model.access import TOKEN_RULE, ApiRole
from sharedroot.store.serverdb import ServerStore

COOKIE = "sharedroot_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    name: str  # the token's name: a job's "who started it"
    role: ApiRole
    csrf: str | None  # set when a session cookie authenticated the request


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def session_cookie(key: bytes, name: str) -> tuple[str, str]:
    """A signed session for token `name`, and its CSRF value."""
    csrf = secrets.token_urlsafe(24)
    body = _b64(
        json.dumps({"n": name, "c": csrf, "e": int(time.time()) + SESSION_SECONDS}).encode()
    )
    sig = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}", csrf


def read_session(key: bytes, cookie: str) -> tuple[str, str] | None:
    """The token name and CSRF value of a valid, unexpired session cookie."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,1024}\.[A-Za-z0-9_-]{43}", cookie):
        return None
    body, sig = cookie.split(".")
    want = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(sig, want):
        return None
    try:
        fields = json.loads(_unb64(body))
        name, csrf, expires = str(fields["n"]), str(fields["c"]), int(fields["e"])
    except (ValueError, KeyError, TypeError):
        return None
    return (name, csrf) if expires > time.time() else None


def principal(request: Request, store: ServerStore, key: bytes) -> Principal:
    """The caller, or 401."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not re.fullmatch(TOKEN_RULE, secret.strip()):
            raise HTTPException(401, "Authorization: Bearer TOKEN expected", _challenge())
        row = store.token(secret.strip())
        if row is None:
            raise HTTPException(401, "unknown or revoked token", _challenge())
        return Principal(row.name, row.role, None)
    session = read_session(key, request.cookies.get(COOKIE, ""))
    if session is None:
        raise HTTPException(401, "sign in: an API token is needed", _challenge())
    name, csrf = session
    for row in store.tokens():
        if row.name == name:
            return Principal(row.name, row.role, csrf)
    raise HTTPException(401, "the session's token was revoked; sign in again", _challenge())


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def check_csrf(request: Request, who: Principal, form_value: str | None = None) -> None:
    """A cookie-authenticated change must carry the session's CSRF value."""
    if who.csrf is None or request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or form_value or ""
    if not hmac.compare_digest(sent.encode(), who.csrf.encode()):
        raise HTTPException(403, "CSRF check failed: reload the page and try again")


def require(who: Principal, role: ApiRole) -> None:
    if not who.role.may(role):
        raise HTTPException(403, f"{_a(role)} token is needed; {who.name} is {_a(who.role)}")


def _a(role: ApiRole) -> str:
    return ("an " if role.value[0] in "aeiou" else "a ") + role.value
