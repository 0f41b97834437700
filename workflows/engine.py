"""The local engine: runs a compiled Workflow/WorkflowTemplate dict (the YAML `argo submit` sends).

It executes the subset this project emits — DAG tasks (`depends`/`dependencies`), container and
script templates, workflow/input/output parameters (`valueFrom.path`, `default`, `globalName`),
output artifacts, `when`, `retryStrategy`, `activeDeadlineSeconds`, `onExit`, template mutexes
and the `{{workflow.*}}` variables used — with Argo's semantics. Anything else is refused by
name before a node runs. Values reach the nodes byte for byte as Argo v4.1.2 passes them. Where a
node runs is the runtime's business (workflows/runtime.py): a subprocess of this Python environment
(outputs mapped to a per-node directory under `runs/<workflow>/`), or the template's image under
podman/docker with the pod's security context and limits. Fields that only matter to a cluster
(GC, metrics, and on the process runtime pod security and resources) are ignored and listed in the
run record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steps.errors import UserError
from workflows.node_watch import NodeProgress, watch_node
from workflows.runtime import Exit, Pod, ProcessRuntime, Runtime, pod_name

# What the engine executes, per object; keys listed as ignored only matter to a cluster.
_SUPPORTED: dict[str, tuple[set[str], set[str]]] = {
    "spec": (
        {"entrypoint", "arguments", "templates", "onExit", "activeDeadlineSeconds"},
        {
            "serviceAccountName",
            "podGC",
            "ttlStrategy",
            "securityContext",
            "podMetadata",
            "workflowMetadata",
            "artifactRepositoryRef",
            "imagePullSecrets",
            "nodeSelector",
            "tolerations",
            "affinity",
            "priority",
            "podPriorityClassName",
            "metrics",
        },
    ),
    "template": (
        {
            "name",
            "inputs",
            "outputs",
            "container",
            "script",
            "dag",
            "retryStrategy",
            "activeDeadlineSeconds",
            "synchronization",
        },
        {
            "metrics",
            "metadata",
            "nodeSelector",
            "tolerations",
            "affinity",
            "podSpecPatch",
            "securityContext",
            "serviceAccountName",
            "automountServiceAccountToken",
        },
    ),
    "container": (
        {"image", "command", "args", "env", "workingDir", "source"},
        {"imagePullPolicy", "resources", "securityContext", "name"},
    ),
    "dag": ({"tasks"}, set()),
    "task": ({"name", "template", "arguments", "depends", "dependencies", "when"}, set()),
    "inputs": ({"parameters"}, set()),
    "outputs": ({"parameters", "artifacts"}, set()),
    "input parameter": ({"name", "value", "default", "enum", "description"}, set()),
    "output parameter": ({"name", "valueFrom", "globalName", "description"}, set()),
    "valueFrom": ({"path", "default"}, set()),
    "output artifact": ({"name", "path", "archive", "optional"}, set()),
    "retryStrategy": ({"limit", "retryPolicy", "backoff"}, set()),
    "backoff": ({"duration", "factor", "maxDuration"}, set()),
    "synchronization": ({"mutexes"}, set()),
    "env": ({"name", "value", "valueFrom"}, set()),
}
_VAR = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
# Argo maps the entry node's phase to the workflow's (operator.go, operate): Skipped and Omitted succeed.
_WORKFLOW_STATUS = {"Succeeded": "Succeeded", "Skipped": "Succeeded", "Omitted": "Succeeded", "Failed": "Failed"}


class UnsupportedConstruct(UserError):
    """The workflow uses something the local engine does not execute."""


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
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "duration_s": round(self.duration, 3) if self.duration is not None else None,
            "attempts": self.attempts,
            "progress": self.progress,
            "outputs": {"parameters": self.outputs, "artifacts": self.artifacts},
            "log": self.log,
        }


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


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
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "duration_s": round((self.finished or time.time()) - self.started, 3),
            "parameters": self.parameters,
            "outputs": {"parameters": self.global_outputs},
            "nodes": [node.record() for node in self.nodes.values()],
            "ignored_locally": self.ignored,
        }


def workflow_parameters(manifest: dict[str, Any]) -> dict[str, str]:
    """The workflow's declared arguments and their defaults, in order."""
    params = manifest.get("spec", {}).get("arguments", {}).get("parameters", [])
    return {p["name"]: str(p.get("value", p.get("default", ""))) for p in params}


def resolve_parameters(manifest: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """Apply `-p NAME=VALUE` overrides like `argo submit`; unknown names and enum violations are errors."""
    declared = workflow_parameters(manifest)
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise UserError(f"unknown parameter {', '.join(unknown)}: the workflow takes {', '.join(declared)}")
    values = {**declared, **overrides}
    for param in manifest["spec"].get("arguments", {}).get("parameters", []):
        enum = param.get("enum")
        if enum and values[param["name"]] not in enum:
            raise UserError(f"parameter {param['name']}={values[param['name']]!r} must be one of {', '.join(enum)}")
    return values


def check_supported(manifest: dict[str, Any], honoured: frozenset[str] = frozenset()) -> list[str]:
    """Refuse what the engine cannot execute (by name); returns the cluster-only fields it will ignore.

    `honoured` names the cluster-only fields the runtime applies (e.g. `container.securityContext`).
    """
    kind = manifest.get("kind")
    if kind not in ("Workflow", "WorkflowTemplate"):
        raise UnsupportedConstruct(f"the local engine runs a Workflow or WorkflowTemplate, not {kind!r}")
    spec = manifest.get("spec") or {}
    if "workflowTemplateRef" in spec:
        raise UnsupportedConstruct("spec.workflowTemplateRef: run the referenced WorkflowTemplate itself")
    ignored: list[str] = []

    def check(obj: dict[str, Any], what: str, where: str) -> None:
        supported, cluster_only = _SUPPORTED[what]
        for key in obj:
            if key in cluster_only:
                if f"{what}.{key}" not in honoured:
                    ignored.append(f"{where}.{key}")
            elif key not in supported:
                raise UnsupportedConstruct(f"{where}.{key} is not supported by the local engine")

    check(spec, "spec", "spec")
    if "entrypoint" not in spec:
        raise UnsupportedConstruct("spec.entrypoint is required")
    for i, param in enumerate(spec.get("arguments", {}).get("parameters", [])):
        check(param, "input parameter", f"spec.arguments.parameters[{i}]")
    if set(spec.get("arguments", {})) - {"parameters"}:
        raise UnsupportedConstruct("spec.arguments.artifacts is not supported by the local engine")
    for template in spec.get("templates", []):
        where = f"templates[{template.get('name')}]"
        check(template, "template", where)
        kinds = [k for k in ("container", "script", "dag") if k in template]
        if len(kinds) != 1:
            raise UnsupportedConstruct(f"{where}: only container, script and dag templates are supported")
        if "dag" in template:
            check(template["dag"], "dag", f"{where}.dag")
            for task in template["dag"].get("tasks", []):
                check(task, "task", f"{where}.dag.tasks[{task.get('name')}]")
                if set(task.get("arguments", {})) - {"parameters"}:
                    raise UnsupportedConstruct(f"{where}.dag.tasks[{task.get('name')}].arguments.artifacts")
                task_where = f"{where}.dag.tasks[{task.get('name')}]"
                target = next((t for t in spec["templates"] if t.get("name") == task.get("template")), None)
                if target is None:
                    raise UnsupportedConstruct(f"{task_where}: no template {task.get('template')!r}")
                if "dag" in target:
                    raise UnsupportedConstruct(f"{task_where}: nested DAGs")
        body = template.get("container") or template.get("script")
        if body is not None:
            check(body, "container", f"{where}.{kinds[0]}")
            for env in body.get("env", []):
                check(env, "env", f"{where}.{kinds[0]}.env[{env.get('name')}]")
                if "valueFrom" in env and set(env["valueFrom"]) - {"secretKeyRef", "resourceFieldRef"}:
                    sources = ", ".join(sorted(set(env["valueFrom"]) - {"secretKeyRef", "resourceFieldRef"}))
                    raise UnsupportedConstruct(
                        f"{where}.env[{env['name']}].valueFrom.{sources}: only secretKeyRef and resourceFieldRef"
                    )
        inputs = template.get("inputs", {})
        check(inputs, "inputs", f"{where}.inputs")
        for param in inputs.get("parameters", []):
            check(param, "input parameter", f"{where}.inputs.parameters[{param.get('name')}]")
        outputs = template.get("outputs", {})
        check(outputs, "outputs", f"{where}.outputs")
        for param in outputs.get("parameters", []):
            check(param, "output parameter", f"{where}.outputs.parameters[{param.get('name')}]")
            if "valueFrom" not in param:
                raise UnsupportedConstruct(f"{where}.outputs.parameters[{param.get('name')}] needs valueFrom.path")
            check(param["valueFrom"], "valueFrom", f"{where}.outputs.parameters[{param.get('name')}].valueFrom")
        for artifact in outputs.get("artifacts", []):
            check(artifact, "output artifact", f"{where}.outputs.artifacts[{artifact.get('name')}]")
        if "retryStrategy" in template:
            check(template["retryStrategy"], "retryStrategy", f"{where}.retryStrategy")
            if "backoff" in template["retryStrategy"]:
                check(template["retryStrategy"]["backoff"], "backoff", f"{where}.retryStrategy.backoff")
        if "synchronization" in template:
            check(template["synchronization"], "synchronization", f"{where}.synchronization")
    names = {t.get("name") for t in spec.get("templates", [])}
    for ref in (spec["entrypoint"], spec.get("onExit")):
        if ref and ref not in names:
            raise UnsupportedConstruct(f"template {ref!r} is referenced but not defined")
    return ignored


def substitute(text: str, scope: dict[str, str], where: str) -> str:
    """Replace `{{name}}` from `scope`; an unresolved name is an error naming where it was."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("="):
            raise UnsupportedConstruct(f"{where}: expression tags {{{{={name[1:]}}}}} are not supported")
        if name not in scope:
            raise UserError(f"{where}: {{{{{name}}}}} does not resolve")
        return scope[name]

    return _VAR.sub(value, text)


def evaluate_when(expression: str) -> bool:
    """Evaluate a substituted `when` as Argo does: govaluate, with its variables turned into strings.

    workflow/controller/operator.go `shouldExecute`: bare words are strings, `true`/`false` are
    booleans, numbers are float64; `==` compares type and value; the result must be a boolean.
    """
    result = _When(expression).parse()
    if not isinstance(result, bool):
        raise UserError(f"Expected boolean evaluation for '{expression}'. Got {_go_value(result)}")
    return result


def _go_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


class _When:
    _TOKEN = re.compile(
        r"\s*(?:(\d+(?:\.\d+)?)|('[^']*'|\"[^\"]*\")|(==|!=|<=|>=|&&|\|\||[<>!()])|([^\s()!=<>&|'\"]+))"
    )

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        while pos < len(text):
            match = self._TOKEN.match(text, pos)
            if not match or match.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise UserError(f"when {text!r}: cannot parse at {text[pos:]!r}")
            number, string, op, word = match.groups()
            if number is not None:
                self.tokens.append(("value", float(number)))
            elif string is not None:
                self.tokens.append(("value", string[1:-1]))
            elif op is not None:
                self.tokens.append(("op", op))
            elif word is not None:
                self.tokens.append(("value", {"true": True, "false": False}.get(word, word)))
            pos = match.end()
        self.pos = 0

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, op: str) -> bool:
        token = self._peek()
        if token == ("op", op):
            self.pos += 1
            return True
        return False

    def parse(self) -> Any:
        result = self._or()
        if (extra := self._peek()) is not None:
            raise UserError(f"when {self.text!r}: unexpected {extra[1]!r}")
        return result

    def _logical(self, op: str, left: Any, right: Any) -> bool:
        if not (isinstance(left, bool) and isinstance(right, bool)):
            raise UserError(f"when {self.text!r}: {op} needs booleans, got {_go_value(left)} and {_go_value(right)}")
        return (left or right) if op == "||" else (left and right)

    def _or(self) -> Any:
        left = self._and()
        while self._take("||"):
            left = self._logical("||", left, self._and())
        return left

    def _and(self) -> Any:
        left = self._compare()
        while self._take("&&"):
            left = self._logical("&&", left, self._compare())
        return left

    def _compare(self) -> Any:
        left = self._unary()
        token = self._peek()
        if token and token[0] == "op" and token[1] in ("==", "!=", "<", ">", "<=", ">="):
            self.pos += 1
            right = self._unary()
            op = token[1]
            # govaluate's == is reflect.DeepEqual: a string never equals a number, nor a bool a number.
            same = type(left) is type(right) and left == right
            if op == "==":
                return same
            if op == "!=":
                return not same
            if not (type(left) is type(right) and isinstance(left, float | str)):
                raise UserError(f"when {self.text!r}: {op} compares two numbers or two strings")
            return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]
        return left

    def _unary(self) -> Any:
        if self._take("!"):
            value = self._unary()
            if not isinstance(value, bool):
                raise UserError(f"when {self.text!r}: ! needs a boolean, got {_go_value(value)}")
            return not value
        if self._take("("):
            value = self._or()
            if not self._take(")"):
                raise UserError(f"when {self.text!r}: missing ')'")
            return value
        token = self._peek()
        if token is None or token[0] != "value":
            raise UserError(f"when {self.text!r}: expected a value")
        self.pos += 1
        return token[1]


def evaluate_depends(expression: str, phases: dict[str, str]) -> bool:
    """Argo's `depends`: task names (optionally `.Succeeded` etc.) with &&, || and !."""

    def result(match: re.Match[str]) -> str:
        task, _, what = match.group(0).partition(".")
        phase = phases[task]
        if not what:
            ok = phase in ("Succeeded", "Skipped")
        elif what == "Succeeded":
            ok = phase == "Succeeded"
        elif what == "Failed":
            ok = phase == "Failed"
        elif what == "Errored":
            ok = phase == "Error"
        elif what == "Skipped":
            ok = phase == "Skipped"
        elif what == "Omitted":
            ok = phase == "Omitted"
        elif what == "Completed":
            ok = phase in ("Succeeded", "Failed")
        elif what in ("AnySucceeded", "AllFailed"):
            ok = phase == ("Succeeded" if what == "AnySucceeded" else "Failed")
        else:
            raise UnsupportedConstruct(f"depends {expression!r}: unknown task result .{what}")
        return "true" if ok else "false"

    names = "|".join(sorted((re.escape(n) for n in phases), key=len, reverse=True))
    pattern = rf"(?<![\w-])(?:{names})(?:\.[A-Za-z]+)?(?![\w-])"
    return evaluate_when(re.sub(pattern, result, expression))


def depends_on(task: dict[str, Any], task_names: set[str]) -> set[str]:
    if "dependencies" in task:
        return set(task["dependencies"])
    expression = task.get("depends", "")
    words = set(re.findall(r"[A-Za-z0-9][-A-Za-z0-9]*(?=\.|\b)", expression))
    return {w for w in words if w in task_names}


def _duration_s(value: Any) -> float:
    """Argo durations: '10s', '2m', '1h', or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(value).strip())
    if not match:
        raise UserError(f"cannot read duration {value!r} (use e.g. 10s, 2m, 1h)")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


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
    ) -> None:
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
        if directory.exists():
            raise UserError(f"a run named {run_name} already exists in {runs_dir}: pick another name")
        self.templates = {t["name"]: t for t in manifest["spec"].get("templates", [])}
        self.run = Run(name=run_name, directory=directory, parameters=values, ignored=ignored)
        self.on_update = on_update or (lambda run: None)
        self.locks_dir = runs_dir / ".locks"
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._stopped: str | None = None
        self._terminated = False
        self._entry: tuple[str, str, str] = (manifest["spec"]["entrypoint"], "Running", "")

    def stop(self, reason: str = "stopped") -> None:
        """Like `argo stop`: kill the running node, run nothing more but the exit handler."""
        self._stopped = reason
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
        self.run.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.run.directory / ".workflow.json.tmp"
        tmp.write_text(json.dumps(self.run.record(), indent=2) + "\n")
        os.replace(tmp, self.run.directory / "workflow.json")

    def _global_scope(self) -> dict[str, str]:
        scope = {f"workflow.parameters.{k}": v for k, v in self.run.parameters.items()}
        scope.update(
            {
                "workflow.name": self.run.name,
                "workflow.namespace": self.manifest.get("metadata", {}).get("namespace", "default"),
                "workflow.uid": self.run.name,
                "workflow.creationTimestamp": _iso(self.run.started) or "",
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
            self._deadline = self.run.started + float(spec["activeDeadlineSeconds"])
        self._changed()
        try:
            phase, message = self._run_template(spec["entrypoint"], spec["entrypoint"], {})
        except UserError as exc:
            phase, message = "Error", str(exc)
        except KeyboardInterrupt:
            self.run.phase, self.run.message, self.run.finished = "Failed", "interrupted", time.time()
            self._changed()
            raise
        if self._deadline is not None and time.time() > self._deadline and phase != "Succeeded":
            message = "Step exceeded its deadline" if not message else message
        if self._stopped and phase != "Succeeded":
            message = f"Stopped: {self._stopped}"  # the reason, rather than which child it failed
        status = _WORKFLOW_STATUS.get(phase, "Error")
        self.run.phase, self.run.message = status, message
        self._entry = (spec["entrypoint"], phase, message)
        if spec.get("onExit") and not self._terminated:
            self._deadline = None  # the exit handler runs whatever happened, as after `argo stop`
            self._stopped = None
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

    def _node_id(self, name: str) -> str:
        """Argo's node name: the workflow's name for the entry node, `<workflow>.<task>` for its tasks."""
        return name if name == self.run.name else f"{self.run.name}.{name}"

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
                "podName": pod_name(self.run.name, node.template, self._node_id(node.name)),
                "finishedAt": _iso(node.finished),
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
        node = Node(name=node_name, template=template_name)
        self.run.nodes[node_name] = node
        scope = {**self._global_scope(), **(extra_scope or {})}
        scope.update({f"inputs.parameters.{k}": v for k, v in inputs.items()})
        with self._mutexes(template, node):
            self._run_pod_with_retries(template, node, scope)
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
        deps = {name: depends_on(task, set(tasks)) for name, task in tasks.items()}
        phases: dict[str, str] = {}
        outputs: dict[str, dict[str, str]] = {}
        base_scope = {**self._global_scope(), **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        for name, task in tasks.items():
            self.run.nodes.setdefault(name, Node(name=name, template=task["template"]))
        pending = list(tasks)
        while pending:
            ready = [n for n in pending if all(d in phases for d in deps[n])]
            if not ready:
                raise UserError(f"{dag_name}: the DAG has a cycle among {', '.join(pending)}")
            for name in ready:
                pending.remove(name)
                task = tasks[name]
                node = self.run.nodes[name]
                if not self._dependencies_met(task, deps[name], phases):
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
                stop_reason = self._stop_reason()
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

    def _progressed(self, node: Node, progress: NodeProgress) -> None:
        node.progress, node.message = progress.text, progress.message
        self._changed(node)

    def _stop_requested(self) -> bool:
        return self._stopped is not None

    def _stop_reason(self) -> str | None:
        if self._stopped:
            return f"Stopped: {self._stopped}"
        if self._deadline is not None and time.time() > self._deadline:
            return "Step exceeded its deadline"
        return None

    def _dependencies_met(self, task: dict[str, Any], deps: set[str], phases: dict[str, str]) -> bool:
        if "depends" in task:
            return evaluate_depends(task["depends"], {d: phases[d] for d in deps})
        return all(phases[d] in ("Succeeded", "Skipped") for d in deps)

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
                    self._changed(node)
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
            self._changed(node)
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
            self._changed(node)
            time.sleep(delay)
            delay *= factor
        if node.attempts > 1 and phase != "Succeeded":
            node.message = f"{message} (after {node.attempts} attempts)"
        node.finished = time.time()
        self._changed(node)

    def _run_pod(self, template: dict[str, Any], node: Node, scope: dict[str, str]) -> tuple[str, str]:
        """One attempt of a container or script template; returns (phase, message)."""
        attempt_dir = self.run.directory / node.name / f"attempt-{node.attempts}"
        out_dir = attempt_dir / "outputs"
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            pod = self._pod(template, node, scope, attempt_dir, out_dir)
        except UserError as exc:
            return "Error", str(exc)
        node.log = str(pod.log_path)
        with watch_node(
            pod.progress_path, lambda p: self._progressed(node, p), self._stop_requested, self.runtime.kill
        ):
            ended: Exit = self.runtime.execute(pod)
        if ended.reason == "error":
            return "Error", ended.message
        if ended.reason == "deadline":
            return "Failed", "Step exceeded its deadline"
        if self._stopped:
            return "Failed", f"Stopped: {self._stopped}"
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
        spec = self.manifest["spec"]
        return Pod(
            name=pod_name(self.run.name, template["name"], self._node_id(node.name)),
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
            pod_security=template.get("securityContext") or spec.get("securityContext") or {},
            container_security=body.get("securityContext") or {},
            resources=body.get("resources") or {},
            script=substitute(body["source"], scope, f"{where}.source") if "source" in body else None,
        )

    def _timeout(self, template: dict[str, Any]) -> float | None:
        limits = []
        if "activeDeadlineSeconds" in template:
            limits.append(float(template["activeDeadlineSeconds"]))
        if self._deadline is not None:
            limits.append(max(0.0, self._deadline - time.time()))
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


def load_manifest(path: Path) -> dict[str, Any]:
    """The first Workflow/WorkflowTemplate document of a YAML file."""
    import yaml

    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except FileNotFoundError as exc:
        raise UserError(f"workflow file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    for document in documents:
        if isinstance(document, dict) and document.get("kind") in ("Workflow", "WorkflowTemplate"):
            return document
    raise UserError(f"{path} holds no Workflow or WorkflowTemplate")
