"""`fashion-pipeline log-sink`: where KServe's logger sends each request and response, on the cluster.

KServe's agent (the logger sidecar of every predictor revision) POSTs CloudEvents in binary mode: the
event's attributes in `ce-*` headers, the request or response body as it crossed the wire. This
server pairs them (steps/monitoring.py, `LogSink`) into the records `monitor` reads and writes them to
the store exactly as `serve --log-sample-rate` does. It answers 202 at once: the agent never waits for
the store.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from steps.errors import UserError
from steps.monitoring import LogSink

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 8 * 1024 * 1024  # a full V1 batch is ~1.2 MB as JSON


class LogSinkServer:
    def __init__(self, host: str, port: int, sink: LogSink) -> None:
        handler = type("Handler", (_Handler,), {"sink": sink})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.port = self.httpd.server_address[1]
        self.sink = sink

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.httpd.serve_forever, name="log-sink", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.sink.log.stop()
        counters = self.sink.log.counters
        log.info(
            "log sink stopped: %d records written, %d dropped; events without a partner %d, not recorded %d",
            counters.records_written,
            counters.dropped_requests + counters.dropped_records,
            self.sink.unpaired,
            self.sink.undecodable,
        )


class _Handler(BaseHTTPRequestHandler):
    sink: LogSink

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _answer(self, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._answer(HTTPStatus.OK if urlsplit(self.path).path == "/healthz" else HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_EVENT_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        body = self.rfile.read(length)
        version = (parse_qs(urlsplit(self.path).query).get("version") or ["unknown"])[0]
        self._answer(HTTPStatus.ACCEPTED)  # first: the agent does not wait for the pairing or the store
        self.sink.accept(self.headers.get("ce-id", ""), self.headers.get("ce-type", ""), version, body)
