"""Test only: InfluxDB 2.x's ``/api/v2/write`` in front of a 1.6.7 ``influxd``, which predates that endpoint.

Translates ``POST /api/v2/write?org=O&bucket=B&precision=ns`` carrying ``Authorization:
Token T`` into ``POST /write?db=B&precision=ns`` on the real server, body and
``Content-Encoding`` passed through unchanged, and the server's status passed back.
It checks the token and the org, as 2.x would (401 / 404 otherwise), and notes every
request so a test can see what the client sent. Everything behind it is the real
InfluxDB.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class V2Proxy:
    """A path-rewriting HTTP proxy on a free loopback port."""

    def __init__(self, upstream: str, token: str, org: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.org = org
        self.requests: list[dict[str, Any]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests.append(
                    {"path": url.path, "query": query, "headers": dict(self.headers), "bytes": len(body)}
                )
                if url.path != "/api/v2/write":
                    return self._answer(404, b'{"code":"not found"}')
                if self.headers.get("Authorization") != f"Token {proxy.token}":
                    return self._answer(401, b'{"code":"unauthorized","message":"unauthorized access"}')
                if query.get("org") != proxy.org:
                    return self._answer(404, b'{"code":"not found","message":"organization not found"}')
                params = {"db": query.get("bucket", ""), "precision": query.get("precision", "ns")}
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "content-encoding")}
                req = urllib.request.Request(
                    f"{proxy.upstream}/write?{urllib.parse.urlencode(params)}",
                    data=body,
                    headers=headers,
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        self._answer(resp.status, resp.read())
                except urllib.error.HTTPError as exc:
                    self._answer(exc.code, exc.read())
                except OSError:
                    self._answer(503, b'{"code":"unavailable"}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
