"""Checks made before any route, as plain ASGI middleware so streamed responses pass through
untouched: the API key (every path but /healthz and the docs), the request body's size (read at most once
past the limit, then replayed to the app), and a header naming the replica that answered."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable

Rejected = Callable[[str, str], None]  # (path, outcome)
# For a request body to arrive whole: 30 s plus a slow link's 16 KB/s for the largest body taken
# (a client that declares more than it sends would otherwise hold its connection for ever).
BODY_SECONDS, SLOW_LINK = 30.0, 16 * 1024
# Liveness probes carry no key; nor can a browser opening the API's docs page, which reads the
# schema (its "Authorize" button then sends the key with the requests tried from it).
OPEN_PATHS = ("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    """A raw ASGI response ``{"error": message}``."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def respond(send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    return respond


class Guard:
    def __init__(self, app, *, api_key: str | None, max_body: int, replica: str, rejected: Rejected) -> None:
        self.app, self.api_key, self.max_body, self.rejected = app, api_key, max_body, rejected
        self.body_seconds = BODY_SECONDS + max_body / SLOW_LINK
        self.replica = replica.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._named(send)
        path, headers = scope["path"], dict(scope["headers"])
        if self.api_key and path not in OPEN_PATHS and not self._authorized(headers):
            self.rejected(path, "unauthorized")
            await error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                 {"WWW-Authenticate": "Bearer"})(send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = headers.get(b"content-length", b"0")
            if not declared.isdigit() or int(declared) > self.max_body:
                await self._too_large(path, send)
                return
            body, deadline = b"", asyncio.get_running_loop().time() + self.body_seconds
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
                except asyncio.TimeoutError:
                    self.rejected(path, "invalid")
                    await error_response(408, f"the request body did not arrive within {self.body_seconds:.0f} s")(send)
                    return
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body:  # a chunked body that declared no length
                    await self._too_large(path, send)
                    return
                if not message.get("more_body"):
                    break
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get(b"x-api-key", b"").decode("latin-1")
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    async def _too_large(self, path: str, send) -> None:
        self.rejected(path, "too_large")
        await error_response(413, f"the request body is larger than {self.max_body} bytes")(send)

    def _named(self, send):
        async def named(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-notagen-replica", self.replica)]}
            await send(message)

        return named


def _replay(body: bytes, receive):
    """The body read by the guard, then the connection's own messages (a disconnect, for streams)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
