"""The local retrain webhook: the same endpoint and contract as the cluster's Argo Events EventSource.

`POST /retrain` with `Authorization: Bearer <token>` and a JSON body that follows the payload
contract (workflows/triggers/retrain-payload.schema.json) queues one run of the pipeline named
`retrain-<event_id>`, exactly the name the Sensor gives the Workflow on a cluster, so a
redelivered event never retrains twice. The event log lives in the store: dedup survives restarts.
Runs execute one at a time on the local engine; `GET /runs/<name>` tells how one is doing.

An event decides only what the contract lists; the operator's `-p` values apply to every run the
queue starts (the policy among them), and each run's `trigger` argument records who started it,
with which payload and which operator values.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from steps.errors import UserError
from steps.registry import utc_now
from steps.storage import Store
from workflows.engine import RunQueue
from workflows.triggers.base import WriteOnceLog
from workflows.triggers.payload import DEFAULT_DATA_URL_PREFIXES, payload_to_parameters, validate_payload

log = logging.getLogger(__name__)
MAX_PAYLOAD_BYTES = 65536  # the EventSource's maxPayloadSize
EVENTS_PREFIX = "events/retrain"


def run_name(event_id: str) -> str:
    return f"retrain-{event_id}"


class EventLog(WriteOnceLog):
    """One write-once object per accepted event: the write itself is the dedup."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, EVENTS_PREFIX)

    def accept(self, event_id: str, record: dict[str, Any]) -> bool:
        """Record the event; False if it was seen before (now or in an earlier life of the server)."""
        return self.write(f"{event_id}.json", record)

    def all(self) -> list[dict[str, Any]]:
        return self.read_all()


class WebhookServer:
    """The HTTP receiver; `serve_forever` runs in the caller's thread or `start` in a new one."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        events: EventLog,
        runs: RunQueue,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        data_url_prefixes: tuple[str, ...] = DEFAULT_DATA_URL_PREFIXES,
    ) -> None:
        if not token:
            raise UserError("the webhook needs a token: set FASHION_PIPELINE_WEBHOOK_TOKEN or pass --token-file")
        self.token = token.encode()
        self.events = events
        self.runs = runs
        self.max_bytes = max_bytes
        self.data_url_prefixes = data_url_prefixes
        handler = type("Handler", (_Handler,), {"receiver": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="webhook", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    stop = shutdown

    def describe(self) -> str:
        return f"webhook: POST http://{self.host}:{self.port}/retrain"

    def requeue_unstarted(self) -> int:
        """Events accepted before a restart whose run never started are queued again, if today's contract takes them."""
        count = 0
        for event in self.events.all():
            if self.runs.status(event["run"]) is not None:
                continue
            payload = event.get("payload")
            problems = validate_payload(payload, self.data_url_prefixes) if payload is not None else ["no payload"]
            if payload is None or problems:
                log.warning("event %s is not queued again: %s", event["event_id"], "; ".join(problems))
                continue
            self.runs.submit(event["run"], payload_to_parameters(payload, self.data_url_prefixes), "webhook", payload)
            count += 1
        return count

    def authorised(self, header: str | None) -> HTTPStatus | None:
        if not header or not header.startswith("Bearer "):
            return HTTPStatus.UNAUTHORIZED
        if not hmac.compare_digest(header[len("Bearer ") :].strip().encode(), self.token):
            return HTTPStatus.FORBIDDEN
        return None

    def accept(self, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
        problems = validate_payload(body, self.data_url_prefixes)
        if problems:
            return HTTPStatus.BAD_REQUEST, {"error": "the payload violates the retrain contract", "problems": problems}
        name = run_name(body["event_id"])
        parameters = payload_to_parameters(body, self.data_url_prefixes)
        record = {
            "event_id": body["event_id"],
            "run": name,
            "payload": body,
            "parameters": parameters,
            "received": utc_now(),
        }
        if not self.events.accept(body["event_id"], record):
            return HTTPStatus.CONFLICT, {"error": f"event {body['event_id']} was already received", "run": name}
        self.runs.submit(name, parameters, "webhook", body)
        return HTTPStatus.ACCEPTED, {"run": name, "status": f"/runs/{name}"}


class _Handler(BaseHTTPRequestHandler):
    receiver: WebhookServer
    server_version = "fashion-pipeline-webhook"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif self.path.startswith("/runs/"):
            status = self.receiver.runs.status(self.path[len("/runs/") :])
            if status is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no run {self.path[len('/runs/') :]}"})
            else:
                self._send(HTTPStatus.OK, status)
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found: POST /retrain, GET /runs/<name>"})

    def do_POST(self) -> None:
        if self.path != "/retrain":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found: POST /retrain"})
            return
        denied = self.receiver.authorised(self.headers.get("Authorization"))
        if denied is not None:
            self.close_connection = True
            self._send(denied, {"error": "a valid bearer token is required"}, {"WWW-Authenticate": "Bearer"})
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send Content-Type: application/json"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "send a Content-Length header"})
            return
        if int(length) > self.receiver.max_bytes:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"payload over {self.receiver.max_bytes} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"invalid JSON: {exc}"})
            return
        status, answer = self.receiver.accept(body)
        self._send(status, answer)
