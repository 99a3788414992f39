"""The sample app's web UI: one HTML page of restaurants and their votes, with a button each.

    GET  /          the page, built here from the API's answer (no script runs in the browser)
    POST /vote      a form's vote (id=ID), passed to the API, then back to / (303)
    *    /api/...   passed to the API as is, so the JSON API answers through the UI's NodePort too
    GET  /healthz   200: the UI itself is up

The API is found through the variables Kubernetes injects for its Service (API_SERVICE_HOST,
API_SERVICE_PORT); VKP_SAMPLE_API=host:port names it instead.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote

TIMEOUT = 5.0


def api_address(env: dict[str, str]) -> tuple[str, int]:
    given = env.get("VKP_SAMPLE_API")
    if given:
        host, _, port = given.rpartition(":")
        return (host, int(port)) if host else (given, 80)
    service_host = env.get("API_SERVICE_HOST")
    if not service_host:
        raise SystemExit("no API: neither VKP_SAMPLE_API nor API_SERVICE_HOST is set")
    return service_host, int(env.get("API_SERVICE_PORT", "80"))


def call_api(api: tuple[str, int], method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(api[0], api[1], timeout=TIMEOUT)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def page(rows: list[dict[str, Any]], problem: str | None = None) -> str:
    """The whole page; every value from the API is escaped."""
    lines = []
    for r in sorted(rows, key=lambda r: (-int(r.get("votes", 0)), str(r.get("name")))):
        rid, name = html.escape(str(r["id"]), quote=True), html.escape(str(r["name"]))
        cuisine, count = html.escape(str(r.get("cuisine", ""))), int(r.get("votes", 0))
        lines.append(
            f'<tr><td>{name}</td><td>{cuisine}</td><td class="votes" id="votes-{rid}">{count}</td>'
            f'<td><form method="post" action="/vote"><input type="hidden" name="id" value="{rid}">'
            '<button type="submit">Vote</button></form></td></tr>'
        )
    notice = f'<p class="problem">{html.escape(problem)}</p>' if problem else ""
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>vkp sample: restaurants</title>'
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em 1em;text-align:left}"
        ".problem{color:#a00}</style></head><body>"
        "<h1>Where should we eat?</h1>"
        f"{notice}<table><tr><th>Restaurant</th><th>Cuisine</th><th>Votes</th><th></th></tr>"
        + "".join(lines)
        + "</table><p>Served by vkp's sample app: web UI, API, redis.</p></body></html>\n"
    )


class Handler(BaseHTTPRequestHandler):
    api: tuple[str, int]  # set on the subclass serve() makes
    server_version = "vkp-sample-ui/0.1"

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else (b"" if method == "POST" else None)
        try:
            status, data = call_api(self.api, method, self.path, body)
        except OSError as exc:
            status, data = 502, json.dumps({"error": f"the API is unavailable: {exc}"}).encode()
        self._send(status, data, "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif path.startswith("/api/"):
            self._proxy("GET")
        elif path in ("/", "/index.html"):
            self._page()
        else:
            self._send(404, b"not found\n", "text/plain")

    def _page(self) -> None:
        try:
            status, data = call_api(self.api, "GET", "/api/restaurants")
            if status != 200:
                raise OSError(f"HTTP {status}: {data[:200].decode(errors='replace')}")
            rows, problem = json.loads(data)["restaurants"], None
        except (OSError, ValueError, KeyError) as exc:
            rows, problem = [], f"The API cannot be reached right now ({exc}); try again in a moment."
        self._send(200 if problem is None else 503, page(rows, problem).encode(), "text/html; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/"):
            self._proxy("POST")
            return
        if path != "/vote":
            self._send(404, b"not found\n", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(errors="replace"))
        rid = (form.get("id") or [""])[0]
        try:
            status, data = call_api(self.api, "POST", f"/api/restaurants/{quote(rid, safe='')}/vote", b"")
        except OSError as exc:
            status, data = 502, str(exc).encode()
        if status != 200:
            self._send(status, data, "application/json")
            return
        self._send(303, b"", "text/plain", {"Location": "/"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(api: tuple[str, int], port: int, host: str = "") -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"api": api})
    return ThreadingHTTPServer((host, port), handler)


def main() -> None:
    api = api_address(dict(os.environ))
    listen = int(os.environ.get("VKP_SAMPLE_PORT", "8080"))
    server = serve(api, listen)
    print(f"ui listening on :{listen}, API at {api[0]}:{api[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
