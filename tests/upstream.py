"""Fake upstreams served on 127.0.0.1 by the tests themselves: recorded or built responses, no network."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | list | dict = b""
    headers: dict = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, (list, dict)):
            return json.dumps(self.body).encode()
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass(frozen=True)
class Seen:
    at: float
    path: str
    query: dict  # the query string, or for a POST its form body
    headers: dict = field(default_factory=dict)  # request headers, names lowercased
    method: str = "GET"
    body: bytes = b""  # the raw request body (a JSON POST: json.loads(seen.body); its type in headers)
    query_string: str = ""  # the raw query string, for repeated keys (`uris=a&uris=b`)


Handler = Callable[[str, dict], Reply]

_request = threading.local()


def current_request_headers() -> dict:
    """Inside a route handler: the headers (lowercased names) of the request being answered."""
    return getattr(_request, "headers", {})


def current_request() -> Seen | None:
    """Inside a route handler: the request being answered, with its raw body and query string."""
    return getattr(_request, "seen", None)


class FakeUpstream:
    """A threaded HTTP server; `routes` maps a path to a handler(path, query) -> Reply, `post_routes`
    a path to a handler(path, form body) -> Reply. Every request is recorded with its headers and raw
    body; a handler reads them (e.g. a JSON body) through `current_request()`."""

    def __init__(self):
        self.routes: dict[str, Handler] = {}
        self.prefix_routes: list[tuple[str, Handler]] = []
        self.post_routes: dict[str, Handler] = {}
        self.requests: list[Seen] = []
        upstream = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                handler = upstream.routes.get(parts.path) or next(
                    (h for prefix, h in upstream.prefix_routes if parts.path.startswith(prefix)), None
                )
                self._answer("GET", parts.path, query, handler, query_string=parts.query)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                form = dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
                parts = urlsplit(self.path)
                self._answer("POST", parts.path, form, upstream.post_routes.get(parts.path), body=body,
                             query_string=parts.query)

            def _answer(self, method: str, path: str, query: dict, handler: Handler | None, *, body: bytes = b"",
                        query_string: str = ""):
                headers = {name.lower(): value for name, value in self.headers.items()}
                seen = Seen(time.time(), path, query, headers, method, body, query_string)
                _request.headers, _request.seen = headers, seen
                upstream.requests.append(seen)
                reply = handler(path, query) if handler else Reply(404, {"error": "Record not found"})
                body = reply.encoded()
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
                for name, value in headers.items():
                    for one in value if isinstance(value, list) else [value]:
                        self.send_header(name, one)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class _Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that gave up (a timeout test) is not an error of the fake

        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeUpstream":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_to(self, path_prefix: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.startswith(path_prefix)]


# --- recorded interactions (../shared/fixtures, read in place) --------------------------------------


def serve_recorded(upstream: FakeUpstream, interactions: list[dict], *, recorded_base: str,
                   ignore_params: tuple[str, ...] = ("limit",)) -> None:
    """Answer GETs with the recorded responses, matched on path and query (minus `ignore_params`).

    URLs inside recorded headers (Link) are rewritten from `recorded_base` to the fake's own URL. When a
    request was recorded several times, the first recording is served.
    """
    table: dict[tuple[str, tuple], dict] = {}
    for interaction in interactions:
        if interaction["method"] != "GET":
            continue
        parts = urlsplit(interaction["url"])
        query = tuple(sorted((k, v) for k, v in parse_qsl(parts.query) if k not in ignore_params))
        # Servers answer a path with or without its trailing slash alike (Mastodon.py asks for
        # "/api/v2/instance/", the API documents "/api/v2/instance").
        table.setdefault((parts.path.rstrip("/"), query), interaction)

    def handler(path: str, query: dict) -> Reply:
        key = (path.rstrip("/"), tuple(sorted((k, v) for k, v in query.items() if k not in ignore_params)))
        interaction = table.get(key)
        if interaction is None:
            return Reply(404, {"error": f"no recording for {path} {query}"})
        headers = {}
        for name, value in interaction["headers"].items():
            if name.lower() in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                continue
            if isinstance(value, str):
                value = value.replace(recorded_base, upstream.url)
            headers[name] = value
        body = interaction["body"]
        return Reply(interaction["status"], body if isinstance(body, (list, dict)) else str(body), headers)

    for path, _query in table:
        upstream.routes[path] = upstream.routes[path + "/"] = handler
