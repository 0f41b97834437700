"""The node runner: one container or script node, as Argo's controller and executor run its pod.

The template becomes a pod spec with every `{{...}}` substituted; the node holds its template's
mutexes, is retried by its retryStrategy, and its outputs are read back as the executor saves them.
Where the pod runs is the runtime's business (workflows/engine/runtime.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.errors import UserError
from workflows.argo_expressions import replace_tags
from workflows.engine.manifest import UnsupportedConstruct
from workflows.engine.records import Node, Run
from workflows.engine.runtime import Exit, Pod, Runtime, pod_name
from workflows.node_watch import NodeProgress, watch_node


def substitute(text: str, scope: dict[str, str], where: str) -> str:
    """Replace `{{name}}` from `scope`; an unresolved name is an error naming where it was."""

    def value(name: str) -> str:
        if name.startswith("="):
            raise UnsupportedConstruct(f"{where}: expression tags {{{{={name[1:]}}}}} are not supported")
        if name not in scope:
            raise UserError(f"{where}: {{{{{name}}}}} does not resolve")
        return scope[name]

    return replace_tags(text, value)


def _duration_s(value: Any) -> float:
    """Argo durations: '10s', '2m', '1h', or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(value).strip())
    if not match:
        raise UserError(f"cannot read duration {value!r} (use e.g. 10s, 2m, 1h)")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


@dataclass
class Limits:
    """Why no node may run on: the workflow's deadline passed, or it was stopped (`argo stop`)."""

    deadline: float | None = None
    stopped: str | None = None

    def reason(self) -> str | None:
        if self.stopped:
            return f"Stopped: {self.stopped}"
        if self.deadline is not None and time.time() > self.deadline:
            return "Step exceeded its deadline"
        return None


@dataclass
class NodeRunner:
    """Runs the container and script nodes of one run; `changed` is called whenever a node changes."""

    run: Run
    runtime: Runtime
    pod_security: dict[str, Any]
    locks_dir: Path
    limits: Limits
    changed: Callable[[Node], None]

    def execute(self, template: dict[str, Any], node: Node, scope: dict[str, str]) -> None:
        """Run `node` to its end under the template's mutexes; its phase and message say how it went."""
        with self._mutexes(template, node):
            self._run_pod_with_retries(template, node, scope)

    def _progressed(self, node: Node, progress: NodeProgress) -> None:
        node.progress, node.message = progress.text, progress.message
        self.changed(node)

    def _stop_requested(self) -> bool:
        return self.limits.stopped is not None

    @contextlib.contextmanager
    def _mutexes(self, template: dict[str, Any], node: Node) -> Iterator[None]:
        """Template mutexes as file locks: runs of any workflow on this machine exclude each other."""
        names = [m["name"] for m in template.get("synchronization", {}).get("mutexes", [])]
        with contextlib.ExitStack() as stack:
            for name in names:
                self.locks_dir.mkdir(parents=True, exist_ok=True)
                handle = stack.enter_context(open(self.locks_dir / f"{name}.lock", "w"))
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    node.message = f"waiting for lock {name}"
                    self.changed(node)
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    node.message = ""
            yield

    def _run_pod_with_retries(self, template: dict[str, Any], node: Node, scope: dict[str, str]) -> None:
        strategy = template.get("retryStrategy")
        limit = int(substitute(str(strategy.get("limit", 0)), scope, f"{node.name}.retryStrategy")) if strategy else 0
        policy = strategy.get("retryPolicy", "OnFailure") if strategy else "OnFailure"
        backoff = strategy.get("backoff", {}) if strategy else {}
        delay = _duration_s(backoff.get("duration", 0))
        factor = float(backoff.get("factor", 1) or 1)
        max_total = _duration_s(backoff["maxDuration"]) if "maxDuration" in backoff else None
        node.started = time.time()
        while True:
            node.attempts += 1
            node.phase, node.message = "Running", ""
            self.changed(node)
            phase, message = self._run_pod(template, node, scope)
            node.phase, node.message = phase, message
            retryable = (
                (phase == "Failed" and policy in ("OnFailure", "Always"))
                or (phase == "Error" and policy in ("OnError", "Always", "OnTransientError"))
            ) and not message.startswith(("Step exceeded its deadline", "Stopped:"))
            out_of_time = max_total is not None and time.time() + delay - node.started > max_total
            if phase == "Succeeded" or not retryable or node.attempts > limit or out_of_time:
                break
            node.message = f"{message}; retry {node.attempts}/{limit} in {delay:g}s"
            self.changed(node)
            time.sleep(delay)
            delay *= factor
        if node.attempts > 1 and phase != "Succeeded":
            node.message = f"{message} (after {node.attempts} attempts)"
        node.finished = time.time()
        self.changed(node)

    def _run_pod(self, template: dict[str, Any], node: Node, scope: dict[str, str]) -> tuple[str, str]:
        """One attempt of a container or script template; returns (phase, message)."""
        attempt_dir = self.run.directory / node.name / f"attempt-{node.earlier_attempts + node.attempts}"
        out_dir = attempt_dir / "outputs"
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            pod = self._pod(template, node, scope, attempt_dir, out_dir)
        except UserError as exc:
            return "Error", str(exc)
        node.log = str(pod.log_path)
        if self.runtime.name != "process":  # what `kubectl get pod -o jsonpath={..image}` would say
            node.image = getattr(self.runtime, "image_override", None) or pod.image
        with watch_node(
            pod.progress_path, lambda p: self._progressed(node, p), self._stop_requested, self.runtime.kill
        ):
            ended: Exit = self.runtime.execute(pod)
        if ended.reason == "error":
            return "Error", ended.message
        if ended.reason == "deadline":
            return "Failed", "Step exceeded its deadline"
        if self.limits.stopped:
            return "Failed", f"Stopped: {self.limits.stopped}"
        if ended.code != 0:
            return "Failed", f"Error (exit code {ended.code}): {self._last_line(pod.log_path)}"
        return self._collect_outputs(template, node, out_dir, pod.output_dirs)

    def _pod(
        self, template: dict[str, Any], node: Node, scope: dict[str, str], attempt_dir: Path, out_dir: Path
    ) -> Pod:
        """The node's pod: every `{{...}}` substituted, as the Argo controller writes the pod spec."""
        body = template.get("container") or template.get("script") or {}
        where = node.name
        env = []
        for item in body.get("env", []):
            entry = dict(item)
            if "value" in item:
                entry["value"] = substitute(str(item["value"]), scope, f"{where}.env.{item['name']}")
            env.append(entry)
        return Pod(
            name=pod_name(self.run.name, template["name"], self.run.node_id(node.name)),
            image=substitute(str(body.get("image", "")), scope, f"{where}.image"),
            command=[substitute(c, scope, f"{where}.command") for c in body.get("command", [])],
            args=[substitute(a, scope, f"{where}.args") for a in body.get("args", [])],
            env=env,
            working_dir=body.get("workingDir"),
            output_dirs=self._container_paths(template),
            out_dir=out_dir,
            attempt_dir=attempt_dir,
            log_path=attempt_dir / "log.txt",
            timeout_s=self._timeout(template),
            pod_security=template.get("securityContext") or self.pod_security,
            container_security=body.get("securityContext") or {},
            resources=body.get("resources") or {},
            script=substitute(body["source"], scope, f"{where}.source") if "source" in body else None,
            run=self.run.name,
            owner=self.run.engine,
        )

    def _timeout(self, template: dict[str, Any]) -> float | None:
        limits = []
        if "activeDeadlineSeconds" in template:
            limits.append(float(template["activeDeadlineSeconds"]))
        if self.limits.deadline is not None:
            limits.append(max(0.0, self.limits.deadline - time.time()))
        return min(limits) if limits else None

    @staticmethod
    def _last_line(log_path: Path) -> str:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:500] if lines else "no output"

    def _container_paths(self, template: dict[str, Any]) -> list[str]:
        """Absolute directories the template writes outputs to, mapped to the node's directory."""
        paths = [p["valueFrom"]["path"] for p in template.get("outputs", {}).get("parameters", [])]
        paths += [a["path"] for a in template.get("outputs", {}).get("artifacts", [])]
        return sorted({str(Path(p).parent) for p in paths}, key=len, reverse=True)

    @staticmethod
    def _path_map(text: str, container_paths: list[str], out_dir: Path) -> str:
        for root in container_paths:
            if text == root or text.startswith(root + "/"):
                return str(out_dir) + text[len(root) :]
        return text

    def _collect_outputs(
        self, template: dict[str, Any], node: Node, out_dir: Path, paths: list[str]
    ) -> tuple[str, str]:
        """Output parameters and artifacts as Argo's executor saves them (workflow/executor/executor.go)."""
        outputs = template.get("outputs", {})
        values = {}
        for param in outputs.get("parameters", []):
            path = Path(self._path_map(param["valueFrom"]["path"], paths, out_dir))
            if path.is_file():
                # SaveParameters: the file's content with one trailing newline trimmed.
                text = path.read_text()
                values[param["name"]] = text[:-1] if text.endswith("\n") else text
            elif "default" in param["valueFrom"]:
                values[param["name"]] = str(param["valueFrom"]["default"])
            else:
                # The emissary saved nothing; the wait container's read of its copy fails like this.
                missing = f"/var/run/argo/outputs/parameters{param['valueFrom']['path']}"
                return "Error", f"open {missing}: no such file or directory"
        artifacts = {}
        for artifact in outputs.get("artifacts", []):
            path = Path(self._path_map(artifact["path"], paths, out_dir))
            if path.exists():
                artifacts[artifact["name"]] = str(path)
            elif not artifact.get("optional"):
                return "Error", f"output artifact {artifact['name']}: {artifact['path']} was not written"
        node.outputs, node.artifacts = values, artifacts
        for param in outputs.get("parameters", []):
            if param.get("globalName"):
                self.run.global_outputs[param["globalName"]] = values[param["name"]]
        return "Succeeded", ""
