"""The sample app's API: restaurants and their votes, as JSON over HTTP, kept in redis.

    GET  /api/restaurants            [{"id", "name", "cuisine", "votes"}, ...]
    POST /api/restaurants/ID/vote    {"id", "votes"}: one vote more for ID (404 for an unknown ID)
    GET  /api/votes                  {"votes": {ID: count}}
    GET  /healthz                    200 when redis answers PING, 503 otherwise

It keeps nothing itself: every vote is a HINCRBY in redis, so an API pod can go at any time.
Redis is found the way pods find Services in a cluster without DNS, through the variables
Kubernetes injects (REDIS_SERVICE_HOST, REDIS_SERVICE_PORT); VKP_SAMPLE_REDIS=host:port
names it instead where a site prefers a DNS name.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RESTAURANTS = [
    {"id": "la-tavola", "name": "La Tavola", "cuisine": "Italian"},
    {"id": "sakura", "name": "Sakura", "cuisine": "Japanese"},
    {"id": "el-fogon", "name": "El Fogon", "cuisine": "Mexican"},
    {"id": "le-bistro", "name": "Le Bistro", "cuisine": "French"},
]
VOTES_KEY = "vkp-sample:votes"
_VOTE = re.compile(r"^/api/restaurants/([a-z0-9-]+)/vote/?$")


class RedisError(Exception):
    """Redis could not be reached, or answered with an error."""


class Redis:
    """The few lines of RESP (redis' protocol) the API needs: one connection per command, so a
    restarted redis or a new Service endpoint is simply the next connection."""

    def __init__(self, host: str, port: int, timeout: float = 3.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def command(self, *args: str | int) -> Any:
        parts = [str(a).encode() for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(payload)
                with sock.makefile("rb") as reader:
                    return _reply(reader)
        except OSError as exc:
            raise RedisError(f"redis at {self.host}:{self.port}: {exc}") from None


def _reply(reader: Any) -> Any:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("redis closed the connection mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = reader.read(size + 2)
        return data[:-2].decode()
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_reply(reader) for _ in range(count)]
    raise RedisError(f"not a RESP reply: {line[:40]!r}")


def redis_address(env: dict[str, str]) -> tuple[str, int]:
    given = env.get("VKP_SAMPLE_REDIS")
    if given:
        host, _, port = given.rpartition(":")
        return (host, int(port)) if host else (given, 6379)
    service_host = env.get("REDIS_SERVICE_HOST")
    if not service_host:
        raise SystemExit("no redis: neither VKP_SAMPLE_REDIS nor REDIS_SERVICE_HOST is set")
    return service_host, int(env.get("REDIS_SERVICE_PORT", "6379"))


def votes(redis: Redis) -> dict[str, int]:
    flat = redis.command("HGETALL", VOTES_KEY) or []
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}


def restaurants(redis: Redis) -> list[dict[str, Any]]:
    counts = votes(redis)
    return [{**r, "votes": counts.get(str(r["id"]), 0)} for r in RESTAURANTS]


def vote(redis: Redis, restaurant: str) -> int:
    return int(redis.command("HINCRBY", VOTES_KEY, restaurant, 1))


class Handler(BaseHTTPRequestHandler):
    redis: Redis  # set on the subclass serve() makes
    server_version = "vkp-sample-api/0.1"

    def _send(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _guarded(self, fn: Any) -> None:
        try:
            fn()
        except RedisError as exc:
            self._send(503, {"error": f"the vote store is unavailable: {exc}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/healthz":
            self._guarded(lambda: self._send(200, {"redis": self.redis.command("PING")}))
        elif path == "/api/restaurants":
            self._guarded(lambda: self._send(200, {"restaurants": restaurants(self.redis)}))
        elif path == "/api/votes":
            self._guarded(lambda: self._send(200, {"votes": votes(self.redis)}))
        else:
            self._send(404, {"error": f"no such resource: {path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        m = _VOTE.match(self.path.split("?", 1)[0])
        if not m:
            self._send(404, {"error": f"no such resource: {self.path}"})
            return
        rid = m.group(1)
        if rid not in {r["id"] for r in RESTAURANTS}:
            self._send(404, {"error": f"no restaurant {rid!r}"})
            return
        self._guarded(lambda: self._send(200, {"id": rid, "votes": vote(self.redis, rid)}))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(redis: Redis, port: int, host: str = "") -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"redis": redis})
    return ThreadingHTTPServer((host, port), handler)


def main() -> None:
    host, port = redis_address(dict(os.environ))
    listen = int(os.environ.get("VKP_SAMPLE_PORT", "8080"))
    server = serve(Redis(host, port), listen)
    print(f"api listening on :{listen}, redis at {host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
