"""The studio's guard against the web pages a user visits: every request needs the token, and every response
says how the browser may use it.

A local server can be reached by any page the browser opens: by a plain request (no token: refused) or by a form
posted to it (the token cookie is ``SameSite=Strict``, so it is not sent). DNS rebinding (a name of the attacker's
that turns into 127.0.0.1) is refused by Starlette's ``TrustedHostMiddleware`` and oversized bodies by FastAPI's
``max_body_size``, both set up in ``jukebox.studio.app`` with ``allowed_hosts`` from here.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["StudioGuard", "allowed_hosts", "PAGE_POLICY"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# What the studio's own page may do: its scripts, styles and media from the studio, nothing inline, no framing.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def allowed_hosts(bound_host: str) -> list[str]:
    """The Host names the studio answers to: the bound address and localhost; any, for a wildcard address (the
    token is then the only guard)."""
    bound = bound_host.strip().strip("[]").lower()
    return ["*"] if bound in WILDCARD_HOSTS else sorted({*LOCAL_HOSTS, bound})


class StudioGuard:
    """ASGI middleware: the token check, the token cookie and the security headers of every response.

    token: accepted as ``?token=``, ``Authorization: Bearer``, or the cookie ``cookie_name`` that a request with
    the token in its query sets (HttpOnly, SameSite=Strict).
    """

    def __init__(self, app: Callable, token: str, cookie_name: str) -> None:
        self.app, self.token, self.cookie_name = app, token, cookie_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the studio has none
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = query.get("token", [""])[-1]
        if not self._accepted(from_query, headers):
            return await _refuse(send, 401, "missing or wrong token: open the address the studio printed at start "
                                            "(…/?token=…), or send Authorization: Bearer <token>")
        set_cookie = bool(from_query) and secrets.compare_digest(from_query.encode(), self.token.encode())

        async def guarded_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(self._headers(message.get("headers", []), set_cookie))
            await send(message)

        await self.app(scope, receive, guarded_send)

    def _accepted(self, from_query: str, headers: dict[str, str]) -> bool:
        offered = [from_query]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is simply no token
            pass
        if self.cookie_name in cookie:
            offered.append(cookie[self.cookie_name].value)
        return any(o and secrets.compare_digest(o.encode(), self.token.encode()) for o in offered)

    def _headers(self, headers: Iterable[tuple[bytes, bytes]], set_cookie: bool) -> Iterable[tuple[bytes, bytes]]:
        headers = list(headers)
        names = {k.lower() for k, _ in headers}
        if b"content-security-policy" not in names:
            headers.append((b"content-security-policy", PAGE_POLICY.encode()))
        headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store")]
        if set_cookie:
            cookie = f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        return headers


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})
