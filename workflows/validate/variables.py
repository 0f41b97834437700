"""Variables: every `{{...}}` resolves where it is used, and outputs read from a task that may be
Skipped declare a default.

Expression tags (`{{=...}}`) are checked loosely: only the references to `inputs.parameters`,
`workflow.parameters`, `tasks.*` and `steps.*` found in them are resolved; the rest of the
expression is not parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from workflows.argo_expressions import LOOP_KEYS, tags
from workflows.validate.dag import Dag
from workflows.validate.documents import Issue, Loc, dig, named, names, step_calls, strings, without


@dataclass(frozen=True)
class WorkflowSpec:
    """What a workflow spec declares: its templates by name, its parameters and global outputs."""

    spec: dict[str, Any]
    templates: dict[str, dict[str, Any]]
    parameters: frozenset[str]
    global_parameters: frozenset[str]
    global_artifacts: frozenset[str]

    @classmethod
    def of(cls, spec: dict[str, Any]) -> WorkflowSpec:
        templates: dict[str, dict[str, Any]] = {}
        global_parameters: set[str] = set()
        global_artifacts: set[str] = set()
        for _, template in named(spec.get("templates")):
            if isinstance(template.get("name"), str):
                templates.setdefault(template["name"], template)
            for _, p in named(dig(template, "outputs", "parameters")):
                if isinstance(p.get("globalName"), str):
                    global_parameters.add(p["globalName"])
            for _, a in named(dig(template, "outputs", "artifacts")):
                if isinstance(a.get("globalName"), str):
                    global_artifacts.add(a["globalName"])
        parameters = names(dig(spec, "arguments", "parameters"))
        return cls(spec, templates, parameters, frozenset(global_parameters), frozenset(global_artifacts))

    def template_of(self, node: dict[str, Any]) -> dict[str, Any] | None:
        """The template a task/step calls, when it is in this workflow."""
        if isinstance(node.get("inline"), dict):
            return node["inline"]
        name = node.get("template")
        return self.templates.get(name) if isinstance(name, str) and "templateRef" not in node else None


_EXPR_REF = re.compile(
    r"(?<![\w.'\"\]])(inputs\.parameters|workflow\.parameters|tasks|steps)"
    r"((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\s*'[^']*'\s*\]|\[\s*\"[^\"]*\"\s*\])*)"
)
_EXPR_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]")

GLOBALS = frozenset(
    {
        "workflow.name",
        "workflow.namespace",
        "workflow.uid",
        "workflow.status",
        "workflow.duration",
        "workflow.failures",
        "workflow.serviceAccountName",
        "workflow.mainEntrypoint",
        "workflow.priority",
        "workflow.scheduledTime",
        "workflow.creationTimestamp",
        "workflow.parameters",
        "workflow.parameters.json",
        "workflow.labels.json",
        "workflow.annotations.json",
        "pod.name",
        "node.name",
        "retries",
        "lastRetry.exitCode",
        "lastRetry.status",
        "lastRetry.duration",
        "lastRetry.message",
        "inputs.parameters",
        "inputs.artifacts",
    }
)
METRIC_VARIABLES = frozenset({"status", "duration", "exitCode", "outputs.result", "outputs.exitCode"})
NODE_FIELDS = frozenset(
    {
        "status",
        "id",
        "startedAt",
        "finishedAt",
        "exitCode",
        "hostNodeName",
        "ip",
        "outputs.result",
        "outputs.parameters",
    }
)


@dataclass(frozen=True)
class Scope:
    ws: WorkflowSpec
    template: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None  # "tasks" in a DAG, "steps" in a steps template
    current: str = ""
    siblings: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> called template
    visible: frozenset[str] = frozenset()
    item: bool = False
    metrics: bool = False


def tag_references(text: str) -> Iterator[str]:
    """Dotted references in the `{{...}}` tags of a string (for expressions: the ones we check)."""
    for body in tags(text):
        if not body.startswith("="):
            yield body
            continue
        for ref in _EXPR_REF.finditer(body[1:]):
            segments = [next(g for g in seg.groups() if g is not None) for seg in _EXPR_SEGMENT.finditer(ref.group(2))]
            yield ".".join([ref.group(1), *segments])


def _resolve(ref: str, scope: Scope) -> str | None:
    """None when `ref` resolves in `scope`, else why not."""
    if ref in GLOBALS:
        return None
    head, _, rest = ref.partition(".")
    if head == "workflow":
        return _resolve_workflow(rest, scope.ws)
    if head in ("inputs", "outputs"):
        return _resolve_io(head, rest, scope)
    if head == "item":
        return None if scope.item else "item is only defined in a task or step with withItems/withParam/withSequence"
    if head in ("tasks", "steps"):
        return _resolve_sibling(head, rest, scope)
    if scope.metrics and (ref in METRIC_VARIABLES or head == "resourcesDuration"):
        return None
    return "unknown variable"


def _resolve_workflow(rest: str, ws: WorkflowSpec) -> str | None:
    section, _, name = rest.partition(".")
    if section in ("labels", "annotations", "creationTimestamp") and name:
        return None
    if section == "parameters" and name:
        return None if name in ws.parameters else f"no workflow parameter '{name}' in spec.arguments.parameters"
    if section == "outputs":
        kind, _, name = name.partition(".")
        declared = {"parameters": ws.global_parameters, "artifacts": ws.global_artifacts}.get(kind)
        if declared is not None and name in declared:
            return None
        return f"no template exports a global output {kind} '{name}' (globalName)"
    return "unknown workflow variable"


def _resolve_io(head: str, rest: str, scope: Scope) -> str | None:
    kind, _, rest = rest.partition(".")
    name, _, suffix = rest.partition(".")
    if head == "outputs" and scope.metrics and f"outputs.{kind}" in METRIC_VARIABLES and not rest:
        return None
    if kind not in ("parameters", "artifacts") or not name:
        return f"unknown {head} variable"
    if suffix and suffix != "path":
        return f"unknown {head} variable"
    if head == "outputs" and kind == "parameters" and not suffix and not scope.metrics:
        return "an output parameter's value is only available in metrics; use .path"
    if name not in names(dig(scope.template, head, kind)):
        return f"template '{scope.template.get('name')}' declares no {head}.{kind} '{name}'"
    return None


def _resolve_sibling(kind: str, rest: str, scope: Scope) -> str | None:
    noun = "task" if kind == "tasks" else "step"
    if scope.kind != kind:
        return f"{kind}.* is only defined inside a {'DAG' if kind == 'tasks' else 'steps'} template's {kind}"
    name, _, path = rest.partition(".")
    if name == "name" and not path:
        return None
    if name not in scope.siblings:
        return f"no {noun} '{name}' in this template"
    if name not in scope.visible:
        relation = "an ancestor of" if kind == "tasks" else "in an earlier group than"
        return f"{noun} '{name}' is not {relation} {noun} '{scope.current}'"
    if path in NODE_FIELDS:
        return None
    section, _, output = path.removeprefix("outputs.").partition(".")
    if not path.startswith("outputs.") or section not in ("parameters", "artifacts") or not output:
        return f"unknown {noun} variable"
    template = scope.siblings[name]
    if template is not None and output not in names(dig(template, "outputs", section)):
        return f"template '{template.get('name')}' of {noun} '{name}' declares no output {section[:-1]} '{output}'"
    return None


def check_variables(node: Any, at: Loc, scope: Scope) -> Iterator[Issue]:
    for loc, text in strings(node, at):
        for ref in tag_references(text):
            why = _resolve(ref, scope)
            if why:
                yield loc, f"cannot resolve {{{{{ref}}}}}: {why}"


def check_template_variables(ws: WorkflowSpec, template: dict[str, Any], at: Loc, dag: Dag | None) -> Iterator[Issue]:
    base = Scope(ws, template)
    yield from check_variables(without(template, "dag", "steps", "outputs", "metrics"), at, base)
    yield from check_variables(template.get("metrics"), (*at, "metrics"), replace(base, metrics=True))
    outputs_scope = base
    if dag is not None:
        siblings = {name: ws.template_of(task) for name, task in dag.tasks.items()}
        yield from check_variables(without(template["dag"], "tasks"), (*at, "dag"), base)
        for name, task in dag.tasks.items():
            visible = frozenset(dag.ancestors(name))
            scope = replace(base, kind="tasks", current=name, siblings=siblings, visible=visible, item=_loops(task))
            loc = dag.locs[name]
            yield from check_variables(without(task, "hooks"), loc, scope)
            hooks_scope = replace(scope, visible=visible | {name})
            yield from check_variables(task.get("hooks"), (*loc, "hooks"), hooks_scope)
        outputs_scope = replace(base, kind="tasks", current="outputs", siblings=siblings, visible=frozenset(siblings))
    elif "steps" in template:
        steps = list(step_calls(template, at))
        siblings = {str(step.get("name")): ws.template_of(step) for _, _, step in steps}
        for group, loc, step in steps:
            earlier = frozenset(str(s.get("name")) for g, _, s in steps if g < group)
            scope = replace(
                base, kind="steps", current=str(step.get("name")), siblings=siblings, visible=earlier, item=_loops(step)
            )
            yield from check_variables(step, loc, scope)
        outputs_scope = replace(base, kind="steps", current="outputs", siblings=siblings, visible=frozenset(siblings))
    yield from check_variables(template.get("outputs"), (*at, "outputs"), outputs_scope)


def _loops(call: dict[str, Any]) -> bool:
    return any(key in call for key in LOOP_KEYS)


# -- reading outputs of a task that may be Skipped ------------------------------------------------


def _output_reads(node: Any, at: Loc, kind: str) -> Iterator[tuple[Loc, str, str]]:
    """(location, task/step, parameter) for each `{{<kind>.T.outputs.parameters.P}}` in node."""
    for loc, text in strings(node, at):
        for ref in tag_references(text):
            parts = ref.split(".")
            if len(parts) == 5 and parts[0] == kind and parts[2:4] == ["outputs", "parameters"]:
                yield loc, parts[1], parts[4]


def _has_default(template: dict[str, Any] | None, parameter: str) -> bool:
    """Unknown templates (templateRef) get the benefit of the doubt."""
    if template is None:
        return True
    for _, declared in named(dig(template, "outputs", "parameters")):
        if declared.get("name") == parameter:
            value_from = declared.get("valueFrom")
            return isinstance(value_from, dict) and "default" in value_from
    return True  # an undeclared output is reported by the variable check


def check_skipped_outputs(ws: WorkflowSpec, template: dict[str, Any], at: Loc, dag: Dag | None) -> Iterator[Issue]:
    """Since Argo 4.0.7 reading an output of a Skipped/Omitted task fails unless it declares valueFrom.default."""
    reported: set[tuple[Loc, str, str]] = set()

    def issue(loc: Loc, producer: str, parameter: str, reason: str, called: dict[str, Any] | None) -> Issue:
        reported.add((loc, producer, parameter))
        owner = called.get("name") if called else "?"
        return loc, (
            f"reads output '{parameter}' of '{producer}', which {reason}; declare "
            f"outputs.parameters[{parameter}].valueFrom.default in template '{owner}'"
        )

    if dag is not None and dag.order is not None:
        for skipped in (name for name in dag.order if "when" in dag.tasks[name]):
            phases = dag.phases_when_skipped(skipped)
            readers: list[tuple[str | None, Any, Loc]] = [(n, t, dag.locs[n]) for n, t in dag.tasks.items()]
            readers.append((None, template.get("outputs"), (*at, "outputs")))
            for reader, node, node_at in readers:
                if reader is not None and phases[reader] != "Succeeded":
                    continue
                for loc, producer, parameter in _output_reads(node, node_at, "tasks"):
                    called = ws.template_of(dag.tasks[producer]) if producer in dag.tasks else None
                    if (
                        phases.get(producer) in ("Skipped", "Omitted")
                        and (loc, producer, parameter) not in reported
                        and not _has_default(called, parameter)
                    ):
                        reason = "has a when" if producer == skipped else f"is Omitted when '{skipped}' is Skipped"
                        yield issue(loc, producer, parameter, reason, called)
    elif "steps" in template:
        steps = {str(step.get("name")): step for _, _, step in step_calls(template, at)}
        readers_at: list[tuple[Loc, Any]] = [(loc, step) for _, loc, step in step_calls(template, at)]
        readers_at.append(((*at, "outputs"), template.get("outputs")))
        for node_at, node in readers_at:
            for loc, producer, parameter in _output_reads(node, node_at, "steps"):
                step = steps.get(producer)
                called = ws.template_of(step) if step else None
                if step and "when" in step and not _has_default(called, parameter):
                    if (loc, producer, parameter) not in reported:
                        yield issue(loc, producer, parameter, "has a when", called)
