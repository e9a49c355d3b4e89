"""The request guard: API keys and the body size limit, checked before any body is read.

A pure ASGI middleware rather than a FastAPI dependency, because FastAPI reads and parses a
request's body before it runs a route's dependencies: a malformed or huge body from a caller
without a key would be parsed (400) or buffered (memory) before the key was ever checked (401).
Here the key is checked from the headers alone, a declared ``Content-Length`` over the limit is
refused with 413 without reading a byte, and a chunked body is counted as it arrives and cut off
at the limit.

Scopes: a ``read`` key may use GET and HEAD routes only; a ``submit`` key may use every route.
The matched scope is left in ``request.state.api_scope`` for routes that want it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READ, SUBMIT = "read", "submit"
_READ_METHODS = frozenset({"GET", "HEAD"})


def _error(status: int, message: str, code: str | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread body must not be taken for the next request
    return status, body, headers


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Wrap an ASGI app with key checks and a body size limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Mapping[str, str],
        max_body_bytes: int,
        public_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app, self.keys, self.max_body_bytes, self.public_paths = app, dict(keys), max_body_bytes, public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope)
        if refusal is not None:
            await _respond(send, *refusal)
            return
        received = 0
        responded = False  # by the guard itself, after cutting a body off

        async def limited_receive() -> Message:
            nonlocal received, responded
            if responded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Answer now and tell the app the client left: raising instead would be caught
                    # by the framework's body parser and answered as a malformed body.
                    responded = True
                    await _respond(send, *self._too_large())
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not responded:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not responded:
                raise  # a disconnect we caused is the only failure that is ours to swallow

    def _check(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        headers = {name.lower(): value for name, value in scope.get("headers", ())}
        if self.keys and scope["path"] not in self.public_paths:
            granted = self._scope_of(headers.get(b"authorization", b""))
            if granted is None:
                return _error(
                    401,
                    "missing or incorrect API key; send the header 'Authorization: Bearer KEY' with the server's api_key",
                    "invalid_api_key",
                )
            if granted == READ and scope["method"] not in _READ_METHODS:
                return _error(
                    403,
                    f"this API key may only read (GET); {scope['method']} {scope['path']} needs a key with the submit scope",
                    "insufficient_scope",
                )
            scope.setdefault("state", {})["api_scope"] = granted
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return _error(400, f"the Content-Length header {declared.decode(errors='replace')!r} is not a number")
            if length > self.max_body_bytes:
                return self._too_large()
        return None

    def _scope_of(self, header: bytes) -> str | None:
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode()
        found = None
        for key, granted in self.keys.items():  # compare with every key: the time taken says nothing
            if secrets.compare_digest(given, key.encode()):
                found = granted
        return found

    def _too_large(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return _error(
            413,
            f"the request body is larger than this server's limit of {self.max_body_bytes} bytes; "
            "send less, or raise max_request_bytes in the server's config",
            "request_too_large",
        )
