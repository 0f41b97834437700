"""What every trigger shares: the write-once event log, event -> arguments, the Sensor, the local contract."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from steps.errors import UserError
from steps.storage import ObjectExists, Store
from workflows import pipeline
from workflows.arguments import argo_string

EVENT_BUS = "default"
LABELS = {"app.kubernetes.io/name": "fashion-pipeline", "app.kubernetes.io/part-of": "fashion-pipeline"}
# Both Sensors submit at most this many Workflows a minute: a flood of events queues, it does not fan out.
RATE_LIMIT = {"unit": "Minute", "requestsPerUnit": 10}


class LocalTrigger(Protocol):
    """A trigger's half in `up`: started after the events accepted before a restart are queued again."""

    def describe(self) -> str:
        """One log line: where it listens."""
        ...

    def requeue_unstarted(self) -> int:
        """Events accepted before a restart whose run never started, queued again; how many."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class WriteOnceLog:
    """Records in the store that are written once: the write is the dedup, so it holds across restarts and processes."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def write(self, name: str, record: Mapping[str, Any]) -> bool:
        """Record `name`; False if it was recorded before (now or in an earlier life of this process)."""
        try:
            self.store.write_json(f"{self.prefix}/{name}", dict(record))
        except ObjectExists:
            return False
        return True

    def exists(self, name: str) -> bool:
        return self.store.exists(f"{self.prefix}/{name}")

    def read_all(self, under: str = "", named: str = "", suffix: str = ".json") -> list[dict[str, Any]]:
        """Every record below `under` whose name (the key's last part) starts with `named` and ends in `suffix`."""
        keys = self.store.list(f"{self.prefix}/{under}".rstrip("/"))
        names = ((key, key.rpartition("/")[2]) for key in keys)
        return [self.store.read_json(key) for key, name in names if name.startswith(named) and name.endswith(suffix)]


def event_arguments(event: Mapping[str, Any], fields: Mapping[str, Any], skip: Iterable[str]) -> dict[str, str]:
    """The workflow arguments an event sets, as Argo strings: each field it has, else its schema default."""
    skipped = set(skip)
    arguments = {}
    for name, spec in fields.items():
        if name in skipped:
            continue
        if name in event:
            arguments[name] = argo_string(event[name])
        elif "default" in spec:
            arguments[name] = argo_string(spec["default"])
    return arguments


def metadata(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": pipeline.NAMESPACE, "labels": dict(LABELS)}


def event_source(name: str, service_account: str, **spec: Any) -> dict[str, Any]:
    """An EventSource on the project's EventBus, under its own account; `spec` holds its source(s)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": metadata(name),
        "spec": {"eventBusName": EVENT_BUS, "template": {"serviceAccountName": service_account}, **spec},
    }


def submit_sensor(
    name: str,
    service_account: str,
    dependency: dict[str, Any],
    trigger: str,
    workflow: dict[str, Any],
    parameters: list[dict[str, Any]],
) -> dict[str, Any]:
    """A Sensor that submits `workflow`, completed with `parameters`, once per event its dependency passes.

    At-least-once is safe: the Workflow's name is fixed by the event, so a retried or redelivered
    trigger meets AlreadyExists instead of starting a second run.
    """
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": metadata(name),
        "spec": {
            "eventBusName": EVENT_BUS,
            "template": {"serviceAccountName": service_account},
            "dependencies": [dependency],
            "triggers": [
                {
                    "template": {
                        "name": trigger,
                        "argoWorkflow": {
                            "operation": "submit",
                            "source": {"resource": workflow},
                            "parameters": parameters,
                        },
                    },
                    "rateLimit": dict(RATE_LIMIT),
                    "atLeastOnce": True,
                    "retryStrategy": {"steps": 3, "duration": "10s", "factor": 2},
                }
            ],
        },
    }


class Polling:
    """A local trigger that looks every `every_s` seconds on its own thread, until `stop`.

    `poll` does one look; a UserError (a store away for a while, nothing to look at yet) is one log
    line and the watching goes on, as does any other failure, logged with its traceback.
    """

    def __init__(self, name: str, every_s: float, first_at_once: bool = True) -> None:
        self.every_s = every_s
        self._first_at_once = first_at_once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._log = logging.getLogger(type(self).__module__)

    def poll(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        if not self._first_at_once and self._stop.wait(self.every_s):
            return
        while not self._stop.is_set():
            try:
                self.poll()
            except UserError as exc:
                self._log.warning("%s: %s", self._thread.name, exc)
            except Exception:
                self._log.exception("%s failed; trying again in %g s", self._thread.name, self.every_s)
            self._stop.wait(self.every_s)


def cron_workflow(
    name: str,
    title: str,
    description: str,
    schedule: str,
    template: Any,
    service_account: str,
    deadline_s: int,
    keep_success_s: int,
) -> dict[str, Any]:
    """A CronWorkflow of one step (Forbid: never two at once), with the store's arguments and its own account."""
    from hera.workflows import CronWorkflow, Parameter
    from hera.workflows import models as m

    from workflows import templates, trigger
    from workflows.arguments import ARGUMENTS

    cron = CronWorkflow(
        name=name,
        namespace=pipeline.NAMESPACE,
        annotations={"workflows.argoproj.io/title": title, "workflows.argoproj.io/description": description},
        labels=dict(LABELS),
        schedules=[schedule],
        timezone="Etc/UTC",
        concurrency_policy="Forbid",
        starting_deadline_seconds=300,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=5,
        entrypoint=template.name,
        service_account_name=service_account,
        active_deadline_seconds=deadline_s,
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
        ttl_strategy=m.TTLStrategy(seconds_after_success=keep_success_s, seconds_after_failure=7 * 86400),
        security_context=templates.POD_SECURITY,
        arguments=[
            *(
                Parameter(name=a.name, value=a.argo_default, description=a.spec.description)
                for a in ARGUMENTS
                if a.name in ("store", "s3_endpoint")
            ),
            Parameter(name=trigger.ARGUMENT, value=trigger.summary("schedule", f"cronworkflow/{name}")),
        ],
    )
    cron.templates = [template]
    return cron.to_dict()
