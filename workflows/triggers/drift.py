"""Drift as a trigger: `up` checks the production model's served traffic on a schedule and retrains once per episode.

Each check measures the last window of the inference log against the production version's training
data (steps/drift.py) with the operator's `DriftPolicy`; events cannot set it. A drifted check opens an
episode, named by the id of the window that opened it: its run is `drift-<window id>`, written once to
the store's drift log (`events/drift/<version>/<window id>.json`), so later checks of the same episode,
a restart, or a second `up` on the same store start nothing more. The episode stays open while checks
keep finding drift and closes at the first check that does not; the next drift is a new episode. The
run's `trigger` names the drift report, and so does its lineage.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from steps.drift import DriftPolicy, check_drift
from steps.errors import UserError
from steps.registry import Registry
from steps.targets.kserve import LOG_SINK_SERVICE
from workflows import pipeline, templates
from workflows.arguments import DEFAULT_S3_ENDPOINT, DEFAULT_STORE
from workflows.engine import RunQueue
from workflows.spec import Step
from workflows.triggers import webhook_sensor
from workflows.triggers.base import Polling, WriteOnceLog, cron_workflow

log = logging.getLogger(__name__)

DRIFT_LOG = "events/drift"
RUN_PREFIX = "drift-"
DEFAULT_CHECK_S = 600.0
OPEN = "open.json"
REASON_MAX = 200  # the retrain payload's reason (workflows/triggers/retrain-payload.schema.json)


def run_name(window_id: str) -> str:
    return f"{RUN_PREFIX}{window_id}"


class DriftWatcher(Polling):
    """`up`'s drift trigger: a check every `check_s` seconds while it runs (the first after `check_s`)."""

    def __init__(
        self,
        registry: Registry,
        runs: RunQueue | None,
        policy: DriftPolicy | None = None,
        check_s: float = DEFAULT_CHECK_S,
    ) -> None:
        super().__init__("drift", check_s, first_at_once=False)
        self.registry = registry
        self.runs = runs
        self.policy = policy or DriftPolicy()
        self.log = WriteOnceLog(registry.store, DRIFT_LOG)

    def describe(self) -> str:
        window, every = f"{self.policy.window_s:g}", f"{self.every_s:g}"
        return f"drift: the production model's last {window} s of traffic checked every {every} s"

    def requeue_unstarted(self) -> int:
        if self.runs is None:
            return 0
        count = 0
        for record in self.log.read_all(suffix=".json"):
            if "run" in record and self.runs.status(record["run"]) is None:
                self._submit(record)
                count += 1
        return count

    def poll(self) -> dict[str, Any]:
        return self.check()

    def check(self, end: float | None = None, out: Path | None = None) -> dict[str, Any]:
        """One check of the production version; starts `drift-<window id>` if it opens an episode."""
        production = self.registry.alias("production")
        if production is None:
            raise UserError("no production model: nothing is served to check")
        version = production["version"]
        with tempfile.TemporaryDirectory(prefix="drift-") as scratch:
            end = time.time() if end is None else end
            report = check_drift(self.registry, version, end, self.policy, out or Path(scratch))
        episode_key = f"{version}/{OPEN}"
        episode = self.registry.store.read_json(f"{DRIFT_LOG}/{episode_key}") if self.log.exists(episode_key) else {}
        if report["drifted"] is None:
            log.info("drift check of %s: no verdict (%s)", version, report["reason"])
        elif not report["drifted"]:
            if episode.get("open"):
                log.info("drift episode %s of %s is over: %s", episode["window_id"], version, report["reason"])
                self.registry.store.replace_json(f"{DRIFT_LOG}/{episode_key}", {**episode, "open": False})
            else:
                log.info("drift check of %s: %s", version, report["reason"])
        elif episode.get("open") and episode.get("launched", True):
            log.info(
                "drift of %s goes on (episode %s, run started): %s", version, episode["window_id"], report["reason"]
            )
        else:  # a new episode, or one whose run could not be started last time
            self._open(version, episode.get("record") or self._record(version, report))
        return report

    def _record(self, version: str, report: dict[str, Any]) -> dict[str, Any]:
        window_id = report["window_id"]
        return {
            "version": version,
            "window_id": window_id,
            "run": run_name(window_id),
            "reason": report["reason"],
            "report": report["report_uri"],
            "report_key": report["report_key"],
            "window": report["window"],
        }

    def _open(self, version: str, record: dict[str, Any]) -> None:
        """The episode is marked open first, then its run is started: a crash in between retries the same run."""
        key = f"{DRIFT_LOG}/{version}/{OPEN}"
        opened = {"open": True, "window_id": record["window_id"], "record": record}
        self.registry.store.replace_json(key, {**opened, "launched": False})
        if self._launch(f"{version}/{record['window_id']}.json", record):
            log.warning("%s; retraining: %s", record["reason"], record["run"])
        self.registry.store.replace_json(key, {**opened, "launched": True})

    def _launch(self, name: str, record: dict[str, Any]) -> bool:
        """Log, then queue (the queue is in memory: `requeue_unstarted` restarts what a crash left logged)."""
        if not self.log.write(name, record):
            return False
        self._submit(record)
        return True

    def _submit(self, record: dict[str, Any]) -> None:
        assert self.runs is not None
        reason = f"{record['reason']} (served version {record['version']})"[:REASON_MAX]
        details = {"report": record["report"], "window_id": record["window_id"], "version": record["version"]}
        self.runs.submit(record["run"], {"reason": reason}, "drift", None, details)


class WebhookDrift(DriftWatcher):
    """The cluster's drift check (the CronWorkflow fashion-drift-check): an episode's retrain goes through the webhook.

    It POSTs the retrain payload to the webhook EventSource, the contract every event keeps: the event id
    is the drift run's name, so the Sensor submits `retrain-drift-<window id>` once (AlreadyExists after),
    and the reason names the window; the drift log in the store maps the window to its report.
    """

    def __init__(self, registry: Registry, webhook_url: str, token: str, policy: DriftPolicy | None = None) -> None:
        super().__init__(registry, None, policy)
        if not token:
            raise UserError("the drift check needs the webhook's token: set FASHION_PIPELINE_WEBHOOK_TOKEN")
        self.webhook_url, self.token = webhook_url, token

    def _launch(self, name: str, record: dict[str, Any]) -> bool:
        """Submit, then log: a POST that fails leaves no record, so the next check opens the episode again."""
        if self.log.exists(name):
            return False
        self._submit(record)  # the Sensor dedups by event id: a repeat after a crash starts nothing
        return self.log.write(name, record)

    def _submit(self, record: dict[str, Any]) -> None:
        import requests

        # The reason is what an event may say: the report's key in the store reaches the run's lineage.
        reason = f"drift {record['window_id']}: report {record['report_key']}"
        if len(reason) > REASON_MAX:
            reason = f"drift {record['window_id']}: {record['reason']}"[:REASON_MAX]
        payload = {"event_id": record["run"], "reason": reason}
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            response = requests.post(self.webhook_url, json=payload, headers=headers, timeout=30)
        except requests.RequestException as exc:
            raise UserError(f"cannot reach the retrain webhook {self.webhook_url}: {exc}") from exc
        # 409: `up`'s own webhook has had this event (the cluster's EventSource answers 200 and the Sensor dedups).
        if response.status_code >= 300 and response.status_code != 409:
            raise UserError(f"the retrain webhook answered {response.status_code}: {response.text[:200]}")


# ---------------------------------------------------------------------------------------------
# The cluster half: KServe's logger sink, and the drift check on a schedule
# ---------------------------------------------------------------------------------------------

CHECK_NAME = "fashion-drift-check"
CHECK_SCHEDULE = "*/10 * * * *"
CHECK_SERVICE_ACCOUNT = "fashion-pipeline-drift-check"
SINK_PORT = 8080


def _sink_env() -> list[dict[str, Any]]:
    secret = {"name": templates.S3_SECRET}
    return [
        {"name": "FASHION_PIPELINE_STORE", "value": DEFAULT_STORE},
        {"name": "S3_ENDPOINT", "value": DEFAULT_S3_ENDPOINT},
        *(
            {"name": key, "valueFrom": {"secretKeyRef": {**secret, "key": key}}}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ),
    ]


def log_sink_manifests(namespace: str = pipeline.NAMESPACE) -> list[dict[str, Any]]:
    """`fashion-pipeline log-sink` as a Deployment and Service: where the InferenceService's logger posts.

    The URL route (CloudEvents to a sink) over KServe's storage logger: the storage logger writes raw,
    base64 request and response bodies (unpaired, its own layout, credentials through a `logger-sa`
    ServiceAccount), which `monitor` would have to pair and decode again; the sink writes the very
    records `serve --log-sample-rate` writes, with the store's own credentials. One Deployment, no token.
    """
    labels = {"app.kubernetes.io/name": LOG_SINK_SERVICE, "app.kubernetes.io/part-of": "fashion-pipeline"}
    metadata = {"name": LOG_SINK_SERVICE, "namespace": namespace, "labels": labels}
    container = {
        "name": "log-sink",
        "image": templates.SLIM_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["fashion-pipeline"],
        "args": ["log-sink", "--host", "0.0.0.0", "--port", str(SINK_PORT)],
        "env": _sink_env(),
        "ports": [{"name": "http", "containerPort": SINK_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": SINK_PORT}},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_security = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata, "automountServiceAccountToken": False},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": LOG_SINK_SERVICE}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": LOG_SINK_SERVICE,
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security,
                        "containers": [container],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "selector": {"app.kubernetes.io/name": LOG_SINK_SERVICE},
                "ports": [{"name": "http", "port": 80, "targetPort": SINK_PORT}],
            },
        },
    ]


CHECK_STEP = Step(
    "drift-check",
    "drift-check",
    extra_args=("--namespace", "{{workflow.namespace}}"),
    secret_env={"FASHION_PIPELINE_WEBHOOK_TOKEN": (webhook_sensor.WEBHOOK_SECRET, webhook_sensor.WEBHOOK_SECRET_KEY)},
)


def check_cron() -> dict[str, Any]:
    """Every CHECK_SCHEDULE: one drift check of production; a new episode POSTs one retrain to the webhook."""
    container = templates.container(CHECK_STEP, templates.Sizing("500m", "1Gi", 900))
    description = (
        f"At {CHECK_SCHEDULE}: measures the last window of the inference log against the production "
        "model's training data; a new drift episode POSTs one retrain to the webhook."
    )
    title = "Fashion-MNIST: drift of the production model"
    return cron_workflow(CHECK_NAME, title, description, CHECK_SCHEDULE, container, CHECK_SERVICE_ACCOUNT, 1200, 86400)


def manifests() -> list[dict[str, Any]]:
    return [*log_sink_manifests(), check_cron()]
