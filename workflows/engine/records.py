"""What a local run records (`runs/<workflow>/workflow.json`): the workflow and each of its nodes.

A record names the engine process that writes it (`engine`: host, pid, start time). A record still
Running whose engine has ended is read as Argo shows a workflow whose pods vanished: Error,
`engine exited unexpectedly`, and it is written so on that read.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steps.lifeline import Owner

RECORD_FILE = "workflow.json"
MANIFEST_FILE = "manifest.json"  # the workflow as it ran: what `runs retry` runs again
ENGINE_GONE = "engine exited unexpectedly"
_UNFINISHED = ("Running", "Pending")


_STAMP = "%Y-%m-%dT%H:%M:%SZ"


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).strftime(_STAMP) if t else None


def epoch(stamp: str | None) -> float | None:
    """A record's time stamp (`iso`) as seconds since the epoch."""
    return datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC).timestamp() if stamp else None


@dataclass
class Node:
    name: str
    template: str
    phase: str = "Pending"
    message: str = ""
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    earlier_attempts: int = 0  # attempts of this node in the run's earlier tries (before `runs retry`)
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    log: str = ""
    progress: str = ""  # `N/M` as the step last reported it (ARGO_PROGRESS_FILE)
    image: str = ""  # the image a container runtime ran it in

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "template": self.template,
            "phase": self.phase,
            "message": self.message,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "duration_s": round(self.duration, 3) if self.duration is not None else None,
            "attempts": self.attempts,
            "progress": self.progress,
            "outputs": {"parameters": self.outputs, "artifacts": self.artifacts},
            "log": self.log,
            **({"earlier_attempts": self.earlier_attempts} if self.earlier_attempts else {}),
            **({"image": self.image} if self.image else {}),
        }


@dataclass
class Run:
    name: str
    directory: Path
    parameters: dict[str, str]
    nodes: dict[str, Node] = field(default_factory=dict)
    phase: str = "Running"
    message: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    global_outputs: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    engine: Owner | None = None
    runtime: dict[str, str] = field(default_factory=dict)  # where its nodes ran: what a retry uses again
    tries: list[dict[str, Any]] = field(default_factory=list)  # the earlier tries, before each `runs retry`

    def record(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"tries": self.tries} if self.tries else {}
        return {
            "name": self.name,
            "phase": self.phase,
            "message": self.message,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "duration_s": round((self.finished or time.time()) - self.started, 3),
            "parameters": self.parameters,
            "outputs": {"parameters": self.global_outputs},
            "nodes": [node.record() for node in self.nodes.values()],
            "ignored_locally": self.ignored,
            "engine": self.engine.as_record() if self.engine else None,
            "runtime": self.runtime,
            **extra,
        }

    def node_id(self, name: str) -> str:
        """Argo's node name: the workflow's name for the entry node, `<workflow>.<task>` for its tasks."""
        return name if name == self.name else f"{self.name}.{name}"


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Replace the run's record in one step: a reader sees the old record or the new one, never a part."""
    tmp = directory / f".{RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, directory / RECORD_FILE)


def read_record(directory: Path) -> dict[str, Any]:
    """A run's record as it stands: a Running record whose engine has ended is settled as Error first."""
    record: dict[str, Any] = json.loads((directory / RECORD_FILE).read_text())
    if record.get("phase") in _UNFINISHED and engine_gone(record):
        record = settle(record)
        with contextlib.suppress(OSError):  # a reader without write access still sees it settled
            write_record(directory, record)
    return record


def engine_gone(record: dict[str, Any]) -> bool:
    """The engine that writes this record has certainly ended (a record without one: never assumed)."""
    owner = Owner.from_record(record.get("engine"))
    return owner is not None and owner.gone()


def settle(record: dict[str, Any]) -> dict[str, Any]:
    """A run whose engine died: Error, and so is the node it was running, as Argo marks vanished pods.

    Each is taken to have ended at the record's last write (when its engine was last seen alive).
    """
    nodes = []
    for node in record.get("nodes", []):
        if node.get("phase") == "Running":
            node = {**node, "phase": "Error", "message": ENGINE_GONE, "finished": _last_seen(node)}
        nodes.append(node)
    return {**record, "phase": "Error", "message": ENGINE_GONE, "finished": _last_seen(record), "nodes": nodes}


def _last_seen(item: dict[str, Any]) -> str | None:
    started, duration = item.get("started"), item.get("duration_s")
    if not started or duration is None:
        return iso(time.time())
    return iso((epoch(started) or 0.0) + float(duration))
