"""What a local run records (`runs/<workflow>/workflow.json`): the workflow and each of its nodes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


@dataclass
class Node:
    name: str
    template: str
    phase: str = "Pending"
    message: str = ""
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    log: str = ""
    progress: str = ""  # `N/M` as the step last reported it (ARGO_PROGRESS_FILE)

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

    def record(self) -> dict[str, Any]:
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
        }

    def node_id(self, name: str) -> str:
        """Argo's node name: the workflow's name for the entry node, `<workflow>.<task>` for its tasks."""
        return name if name == self.name else f"{self.name}.{name}"
