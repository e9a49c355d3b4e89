"""The CLI's client for a running ``factory serve`` (``factory jobs ... --server URL``).

The standard library's urllib is enough for a handful of JSON requests, so the CLI needs no
HTTP package; the key comes from ``FACTORY_API_KEY``, never from the command line (where
``ps`` and shell histories would show it).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from factory.errors import ConfigError

KEY_ENV = "FACTORY_API_KEY"


class ServiceClient:
    def __init__(self, url: str, key: str | None = None, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--server '{url}' is not an http:// or https:// URL; give the address factory serve prints"
            )
        self.url, self.key, self.timeout = url.rstrip("/"), key if key is not None else os.environ.get(KEY_ENV), timeout

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The JSON answer, or a ConfigError carrying the server's one-sentence error."""
        params = {k: v for k, v in query.items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            hint = f"; set {KEY_ENV} to the server's key" if exc.code == 401 else ""
            raise ConfigError(f"the server {self.url} answered {exc.code}: {message}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise ConfigError(
                f"cannot reach the server {self.url} ({why}); check --server and that factory serve runs"
            ) from None
