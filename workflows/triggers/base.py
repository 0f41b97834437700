"""What every trigger shares: the write-once event log, event -> arguments, the Sensor, the local contract."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

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
