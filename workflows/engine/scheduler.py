"""The scheduler: runs a workflow's entrypoint, its DAG in dependency order, then its exit handler.

The workflow's phase follows Argo's operator (workflow/controller/operator.go); container and
script nodes are run by the node runner (nodes.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steps.errors import UserError
from steps.lifeline import Owner
from workflows.argo_expressions import evaluate_depends, evaluate_when, referenced_tasks, task_condition, task_results
from workflows.engine.manifest import check_supported, resolve_parameters
from workflows.engine.nodes import Limits, NodeRunner, substitute
from workflows.engine.records import (
    MANIFEST_FILE,
    RECORD_FILE,
    Node,
    Run,
    epoch,
    iso,
    read_record,
    write_record,
)
from workflows.engine.runtime import ProcessRuntime, Runtime, pod_name

# Argo maps the entry node's phase to the workflow's (operator.go, operate): Skipped and Omitted succeed.
_WORKFLOW_STATUS = {"Succeeded": "Succeeded", "Skipped": "Succeeded", "Omitted": "Succeeded", "Failed": "Failed"}


class Engine:
    """Runs one workflow; `on_update` is called with the Run whenever a node changes phase."""

    def __init__(
        self,
        manifest: dict[str, Any],
        runs_dir: Path,
        parameters: dict[str, str] | None = None,
        name: str | None = None,
        on_update: Callable[[Run], None] | None = None,
        executable_dir: Path | None = None,
        runtime: Runtime | None = None,
        retry: dict[str, Any] | None = None,
    ) -> None:
        """`retry`: the record of this run's last try, to run again from its failed nodes (`runs retry`)."""
        self.manifest = manifest
        self.runtime: Runtime = runtime or ProcessRuntime(executable_dir)
        ignored = check_supported(manifest, self.runtime.honoured)
        values = resolve_parameters(manifest, parameters or {})
        base = manifest.get("metadata", {}).get("name") or manifest.get("metadata", {}).get("generateName", "wf")
        run_name = name or f"{base.rstrip('-')}-{secrets.token_hex(3)}"
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", run_name):
            raise UserError(f"workflow name {run_name!r} must be lowercase letters, digits and dashes")
        runs_dir = runs_dir.resolve()
        directory = runs_dir / run_name
        if retry is None and (directory / RECORD_FILE).exists():
            raise UserError(f"a run named {run_name} already exists in {runs_dir}: pick another name")
        self.templates = {t["name"]: t for t in manifest["spec"].get("templates", [])}
        self.run = Run(name=run_name, directory=directory, parameters=values, ignored=ignored)
        self.run.engine = Owner.current()
        self.run.runtime = {"name": self.runtime.name, **({"image": image} if (image := _image(self.runtime)) else {})}
        self._reused: dict[str, Node] = {}
        self._earlier: dict[str, int] = {}
        if retry is not None:
            self._resume(retry)
        self.on_update = on_update or (lambda run: None)
        self._lock = threading.Lock()
        self.limits = Limits()
        self._terminated = False
        pod_security = manifest["spec"].get("securityContext") or {}
        self.nodes = NodeRunner(self.run, self.runtime, pod_security, runs_dir / ".locks", self.limits, self._changed)
        self._entry: tuple[str, str, str] = (manifest["spec"]["entrypoint"], "Running", "")

    def stop(self, reason: str = "stopped") -> None:
        """Like `argo stop`: kill the running node, run nothing more but the exit handler."""
        self.limits.stopped = reason
        self.runtime.kill()

    def terminate(self, reason: str = "terminated") -> None:
        """Like `argo terminate`: as `stop`, and the exit handler is skipped (or killed if running)."""
        self._terminated = True
        self.stop(reason)

    # --- bookkeeping -------------------------------------------------------------------------
    def _changed(self, node: Node | None = None) -> None:
        with self._lock:
            self._write_record()
            self.on_update(self.run)

    def _write_record(self) -> None:
        if not (self.run.directory / RECORD_FILE).exists():
            self._create_directory()
        write_record(self.run.directory, self.run.record())

    def _create_directory(self) -> None:
        """The run's directory appears whole, with its record and manifest, or not at all.

        A run whose directory exists has started: a restart never starts its event again. Two
        engines starting the same name: the second one's rename fails.
        """
        runs_dir = self.run.directory.parent
        runs_dir.mkdir(parents=True, exist_ok=True)
        staging = runs_dir / f".{self.run.name}.{secrets.token_hex(4)}.new"
        staging.mkdir()
        (staging / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=1) + "\n")
        (staging / RECORD_FILE).write_text(json.dumps(self.run.record(), indent=2) + "\n")
        try:
            os.rename(staging, self.run.directory)  # onto nothing, or onto an empty directory a crash left
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"a run named {self.run.name} already exists in {runs_dir}: pick another name") from exc

    # --- retry ---------------------------------------------------------------------------------
    @classmethod
    def retry(
        cls,
        runs_dir: Path,
        name: str,
        on_update: Callable[[Run], None] | None = None,
        runtime: Runtime | None = None,
    ) -> Engine:
        """`argo retry`: the run again, same arguments, from its failed or interrupted nodes."""
        directory = runs_dir / name
        if not (directory / RECORD_FILE).is_file():
            raise UserError(f"no run named {name!r} in {runs_dir} (`runs list` shows them)")
        record = read_record(directory)
        phase = record.get("phase")
        if phase in ("Running", "Pending"):
            raise UserError(f"run {name} is {phase}: wait for it to end (or stop it), then retry")
        if phase == "Succeeded":
            raise UserError(f"run {name} Succeeded: there is nothing to retry (start a new run)")
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise UserError(f"run {name} was recorded without its workflow ({MANIFEST_FILE}): start a new run")
        manifest = json.loads(manifest_path.read_text())
        parameters = {str(k): str(v) for k, v in record.get("parameters", {}).items()}
        return cls(manifest, runs_dir, parameters, name=name, on_update=on_update, runtime=runtime, retry=record)

    def _resume(self, record: dict[str, Any]) -> None:
        """Keep the Succeeded nodes of the last try with their outputs; the others run again."""
        try_ = {k: record.get(k) for k in ("phase", "message", "started", "finished", "engine", "nodes")}
        self.run.tries = [*record.get("tries", []), try_]
        self.run.global_outputs = dict(record.get("outputs", {}).get("parameters", {}))
        self.run.started = epoch(record.get("started")) or self.run.started
        exit_handler = self.manifest["spec"].get("onExit")
        for item in record.get("nodes", []):
            name, attempts = item["name"], int(item.get("attempts") or 0)
            self._earlier[name] = attempts + int(item.get("earlier_attempts") or 0)
            if item.get("phase") == "Succeeded" and name != "onExit" and item.get("template") != exit_handler:
                outputs = item.get("outputs", {})
                self._reused[name] = Node(
                    name=name,
                    template=item["template"],
                    phase="Succeeded",
                    message=item.get("message", ""),
                    started=(started := epoch(item.get("started"))),
                    # its duration as recorded (the time stamps keep whole seconds only)
                    finished=started + float(item["duration_s"]) if started and item.get("duration_s") else None,
                    attempts=attempts,
                    earlier_attempts=int(item.get("earlier_attempts") or 0),
                    outputs=dict(outputs.get("parameters", {})),
                    artifacts=dict(outputs.get("artifacts", {})),
                    log=item.get("log", ""),
                    progress=item.get("progress", ""),
                    image=item.get("image", ""),
                )

    def _new_node(self, name: str, template: str) -> Node:
        return self._reused.get(name) or Node(name=name, template=template, earlier_attempts=self._earlier.get(name, 0))

    def _global_scope(self) -> dict[str, str]:
        scope = {f"workflow.parameters.{k}": v for k, v in self.run.parameters.items()}
        scope.update(
            {
                "workflow.name": self.run.name,
                "workflow.namespace": self.manifest.get("metadata", {}).get("namespace", "default"),
                "workflow.uid": self.run.name,
                "workflow.creationTimestamp": iso(self.run.started) or "",
                "workflow.serviceAccountName": self.manifest["spec"].get("serviceAccountName", "default"),
            }
        )
        scope.update({f"workflow.outputs.parameters.{k}": v for k, v in self.run.global_outputs.items()})
        return scope

    # --- execution ---------------------------------------------------------------------------
    def execute(self) -> Run:
        """Run the entrypoint, then the exit handler; the Run's phase is the workflow's phase."""
        spec = self.manifest["spec"]
        if "activeDeadlineSeconds" in spec:
            self.limits.deadline = self.run.started + float(spec["activeDeadlineSeconds"])
        self._changed()
        try:
            phase, message = self._run_template(spec["entrypoint"], spec["entrypoint"], {})
        except UserError as exc:
            phase, message = "Error", str(exc)
        except KeyboardInterrupt:
            self.run.phase, self.run.message, self.run.finished = "Failed", "interrupted", time.time()
            self._changed()
            raise
        if self.limits.deadline is not None and time.time() > self.limits.deadline and phase != "Succeeded":
            message = "Step exceeded its deadline" if not message else message
        if self.limits.stopped and phase != "Succeeded":
            message = f"Stopped: {self.limits.stopped}"  # the reason, rather than which child it failed
        status = _WORKFLOW_STATUS.get(phase, "Error")
        self.run.phase, self.run.message = status, message
        self._entry = (spec["entrypoint"], phase, message)
        if spec.get("onExit") and not self._terminated:
            self.limits.deadline = None  # the exit handler runs whatever happened, as after `argo stop`
            self.limits.stopped = None
            scope_extra = {"workflow.status": status, "workflow.failures": self.failures_value()}
            try:
                exit_phase, exit_message = self._run_template(spec["onExit"], "onExit", {}, extra_scope=scope_extra)
            except UserError as exc:
                exit_phase, exit_message = "Error", str(exc)
            # operator.go: a Succeeded workflow whose exit handler failed is Failed (or Error).
            if status == "Succeeded" and exit_phase in ("Failed", "Error"):
                self.run.phase, self.run.message = exit_phase, exit_message
        self.run.finished = time.time()
        self._changed()
        return self.run

    def failures_value(self) -> str:
        """`{{workflow.failures}}` byte for byte as Argo v4.1.2 passes it (workflow/controller/operator.go).

        The failed nodes (the DAG node included) as a JSON list, then `strconv.Quote`d: a JSON string
        holding JSON. With nothing failed, the list is Go's nil slice: the 6 characters `"null"`.
        """
        nodes = list(self.run.nodes.values())
        entry_template, entry_phase, entry_message = self._entry
        if "dag" in self.templates[entry_template]:
            # The DAG is a node of its own, named after the workflow; a failed child fails it.
            dag = Node(name=self.run.name, template=entry_template, phase=entry_phase, message=entry_message)
            dag.finished = time.time()
            nodes.insert(0, dag)
        failures = [
            {
                "displayName": node.name,
                "message": node.message,
                "templateName": node.template,
                "phase": node.phase,
                "podName": pod_name(self.run.name, node.template, self.run.node_id(node.name)),
                "finishedAt": iso(node.finished),
            }
            for node in nodes
            if node.phase in ("Failed", "Error")
        ]
        # Go's json.Marshal: compact, and <, >, & escaped for HTML; strconv.Quote escapes as JSON does for ASCII.
        marshalled = json.dumps(failures or None, separators=(",", ":"), ensure_ascii=False)
        marshalled = marshalled.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return json.dumps(marshalled, ensure_ascii=False)

    def _run_template(
        self,
        template_name: str,
        node_name: str,
        arguments: dict[str, str],
        extra_scope: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        template = self.templates[template_name]
        inputs = self._bind_inputs(template, arguments, node_name)
        if "dag" in template:
            return self._run_dag(template, node_name, inputs)
        node = self._new_node(node_name, template_name)
        self.run.nodes[node_name] = node
        if node_name in self._reused:
            return node.phase, node.message
        scope = {**self._global_scope(), **(extra_scope or {})}
        scope.update({f"inputs.parameters.{k}": v for k, v in inputs.items()})
        self.nodes.execute(template, node, scope)
        return node.phase, node.message

    def _bind_inputs(self, template: dict[str, Any], arguments: dict[str, str], where: str) -> dict[str, str]:
        values = {}
        for param in template.get("inputs", {}).get("parameters", []):
            name = param["name"]
            if name in arguments:
                values[name] = arguments[name]
            elif "value" in param:
                values[name] = str(param["value"])
            elif "default" in param:
                values[name] = str(param["default"])
            else:
                raise UserError(f"{where}: input parameter {name!r} of template {template['name']!r} has no value")
            if param.get("enum") and values[name] not in param["enum"]:
                raise UserError(f"{where}: input {name}={values[name]!r} must be one of {', '.join(param['enum'])}")
        return values

    def _run_dag(self, template: dict[str, Any], dag_name: str, inputs: dict[str, str]) -> tuple[str, str]:
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        conditions = {name: task_condition(task) for name, task in tasks.items()}
        deps = {name: referenced_tasks(cond) for name, cond in conditions.items()}
        phases: dict[str, str] = {}
        outputs: dict[str, dict[str, str]] = {}
        base_scope = {**self._global_scope(), **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        for name, task in tasks.items():
            self.run.nodes.setdefault(name, self._new_node(name, task["template"]))
        pending = list(tasks)
        while pending:
            ready = [n for n in pending if all(d in phases for d in deps[n])]
            if not ready:
                raise UserError(f"{dag_name}: the DAG has a cycle among {', '.join(pending)}")
            for name in ready:
                pending.remove(name)
                task = tasks[name]
                node = self.run.nodes[name]
                if name in self._reused:  # Succeeded in the last try: its outputs stand, it does not run again
                    phases[name], outputs[name] = node.phase, node.outputs
                    continue
                cond = conditions[name]
                if cond is not None and not evaluate_depends(cond, {d: task_results(phases[d]) for d in deps[name]}):
                    node.phase, node.message = "Omitted", "its dependencies were not met"
                    phases[name] = "Omitted"
                    self._changed(node)
                    continue
                scope = {**base_scope, **self._task_scope(outputs, phases)}
                where = f"{dag_name}.{name}"
                try:
                    arguments = {
                        p["name"]: substitute(str(p.get("value", "")), scope, f"{where}.arguments.{p['name']}")
                        for p in task.get("arguments", {}).get("parameters", [])
                    }
                    run_it = evaluate_when(substitute(task["when"], scope, f"{where}.when")) if "when" in task else True
                except UserError as exc:
                    node.phase, node.message = "Error", str(exc)
                    phases[name] = "Error"
                    self._changed(node)
                    continue
                if not run_it:
                    condition = substitute(task["when"], scope, where)
                    node.phase, node.message = "Skipped", f"when '{condition}' evaluated false"
                    node.outputs = self._defaults(task["template"])
                    outputs[name] = node.outputs
                    phases[name] = "Skipped"
                    self._changed(node)
                    continue
                stop_reason = self.limits.reason()
                if stop_reason:
                    node.phase, node.message = "Failed", stop_reason
                    phases[name] = "Failed"
                    self._changed(node)
                    continue
                phase, _ = self._run_template(task["template"], name, arguments)
                phases[name] = phase
                outputs[name] = self.run.nodes[name].outputs
        failed = [n for n, p in phases.items() if p in ("Failed", "Error")]
        if failed:
            return "Failed", f"child {', '.join(failed)} failed"
        return "Succeeded", ""

    def _task_scope(self, outputs: dict[str, dict[str, str]], phases: dict[str, str]) -> dict[str, str]:
        scope = {}
        for task, values in outputs.items():
            scope.update({f"tasks.{task}.outputs.parameters.{k}": v for k, v in values.items()})
        scope.update({f"tasks.{task}.status": phase for task, phase in phases.items()})
        return scope

    def _defaults(self, template_name: str) -> dict[str, str]:
        """Outputs of a Skipped task: only those that declare a default exist (Argo >= 4.0.7)."""
        params = self.templates[template_name].get("outputs", {}).get("parameters", [])
        return {p["name"]: str(p["valueFrom"]["default"]) for p in params if "default" in p.get("valueFrom", {})}


def _image(runtime: Runtime) -> str | None:
    return getattr(runtime, "image_override", None)
