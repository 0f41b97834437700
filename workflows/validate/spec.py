"""Semantic checks of a workflow spec: what `argo lint` adds to the schema.

Names, entrypoint and exit handler, hooks, metrics, calls and the inputs they supply here; DAG
dependencies in dag.py; every `{{...}}` and reads of outputs that may not exist in variables.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from workflows.validate.dag import Dag
from workflows.validate.documents import Issue, Loc, dig, named, names, step_calls, without
from workflows.validate.variables import (
    Scope,
    WorkflowSpec,
    check_skipped_outputs,
    check_template_variables,
    check_variables,
)

NAME_RE = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")
PARAM_NAME_RE = re.compile(r"^[-a-zA-Z0-9_]+$")
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
METRIC_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def spec_issues(spec: dict[str, Any], needs_entrypoint: bool) -> Iterator[Issue]:
    ws = WorkflowSpec.of(spec)
    yield from _check_template_names(spec)
    yield from _check_entrypoint_and_exit(ws, needs_entrypoint)
    yield from _check_metrics(spec.get("metrics"), ("metrics",))
    yield from _check_io_names(spec, ())
    yield from check_variables(without(spec, "templates", "templateDefaults"), (), Scope(ws))
    for i, template in named(spec.get("templates")):
        at: Loc = ("templates", i)
        dag = Dag.of(body, (*at, "dag")) if isinstance(body := template.get("dag"), dict) else None
        yield from _check_io_names(template, at)
        yield from _check_metrics(template.get("metrics"), (*at, "metrics"))
        if dag is not None:
            yield from dag.issues
            tasks = named(dig(template, "dag", "tasks"))
            yield from _check_calls(ws, (((*at, "dag", "tasks", j), task) for j, task in tasks), "task")
        yield from _check_steps(ws, template, at)
        yield from check_template_variables(ws, template, at, dag)
        yield from check_skipped_outputs(ws, template, at, dag)


def _check_template_names(spec: dict[str, Any]) -> Iterator[Issue]:
    seen: set[str] = set()
    for i, template in named(spec.get("templates")):
        name = template.get("name")
        if not isinstance(name, str):
            continue
        if not NAME_RE.match(name):
            yield ("templates", i, "name"), f"template name '{name}' must match {NAME_RE.pattern}"
        if name in seen:
            yield ("templates", i, "name"), f"template name '{name}' is used twice"
        seen.add(name)


def _check_entrypoint_and_exit(ws: WorkflowSpec, needs_entrypoint: bool) -> Iterator[Issue]:
    if "workflowTemplateRef" in ws.spec:
        return
    entrypoint = ws.spec.get("entrypoint")
    if entrypoint is None:
        if needs_entrypoint:
            yield (), "spec.entrypoint is required (no workflowTemplateRef)"
    elif isinstance(entrypoint, str) and entrypoint not in ws.templates:
        yield ("entrypoint",), f"entrypoint '{entrypoint}' is not a template of this workflow"
    on_exit = ws.spec.get("onExit")
    if isinstance(on_exit, str) and on_exit not in ws.templates:
        yield ("onExit",), f"onExit template '{on_exit}' is not a template of this workflow"
    yield from _check_hooks(ws, ws.spec.get("hooks"), ("hooks",))


def _check_hooks(ws: WorkflowSpec, hooks: Any, at: Loc) -> Iterator[Issue]:
    if not isinstance(hooks, dict):
        return
    for key, hook in hooks.items():
        name = dig(hook, "template")
        if isinstance(name, str) and "templateRef" not in hook and name not in ws.templates:
            yield (*at, key, "template"), f"hook template '{name}' is not a template of this workflow"


def _check_metrics(metrics: Any, at: Loc) -> Iterator[Issue]:
    for i, metric in named(dig(metrics, "prometheus")):
        loc = (*at, "prometheus", i)
        name = metric.get("name")
        if isinstance(name, str) and not METRIC_NAME_RE.match(name):
            yield (*loc, "name"), f"metric name '{name}' must match {METRIC_NAME_RE.pattern}"
        help_text = metric.get("help")
        if not isinstance(help_text, str) or not help_text.strip():
            yield (*loc, "help"), f"metric '{name}' needs a non-empty help"
        kinds = [k for k in ("counter", "gauge", "histogram") if k in metric]
        if len(kinds) != 1:
            yield loc, f"metric '{name}' must have exactly one of counter, gauge, histogram (has {len(kinds)})"
        for j, label in named(metric.get("labels")):
            key = label.get("key")
            if isinstance(key, str) and not METRIC_LABEL_RE.match(key):
                yield (*loc, "labels", j, "key"), f"metric label key '{key}' must match {METRIC_LABEL_RE.pattern}"
            if label.get("value") in ("", None):
                yield (*loc, "labels", j, "value"), f"metric label '{key}' needs a non-empty value"


def _check_io_names(node: dict[str, Any], at: Loc) -> Iterator[Issue]:
    """Parameter and artifact names (inputs, outputs, arguments): a shape and unique per list."""
    for section in ("inputs", "outputs", "arguments"):
        for kind in ("parameters", "artifacts"):
            seen: set[str] = set()
            for i, item in named(dig(node, section, kind)):
                name = item.get("name")
                if not isinstance(name, str):
                    continue
                loc = (*at, section, kind, i, "name")
                if not PARAM_NAME_RE.match(name):
                    yield loc, f"{kind[:-1]} name '{name}' must match {PARAM_NAME_RE.pattern}"
                if name in seen:
                    yield loc, f"{section}.{kind} names '{name}' twice"
                seen.add(name)


def _check_calls(ws: WorkflowSpec, calls: Iterable[tuple[Loc, dict[str, Any]]], noun: str) -> Iterator[Issue]:
    """Tasks/steps: name shape, unique names, the template they call exists and gets its inputs."""
    seen: set[str] = set()
    for loc, call in calls:
        name = call.get("name")
        if isinstance(name, str):
            if not NAME_RE.match(name):
                yield (*loc, "name"), f"{noun} name '{name}' must match {NAME_RE.pattern}"
            if name in seen:
                yield (*loc, "name"), f"{noun} name '{name}' is used twice"
            seen.add(name)
        target = call.get("template")
        if isinstance(target, str) and "templateRef" not in call and target not in ws.templates:
            yield (*loc, "template"), f"{noun} '{name}' calls template '{target}', which does not exist"
        elif not any(k in call for k in ("template", "templateRef", "inline")):
            yield loc, f"{noun} '{name}' needs one of template, templateRef, inline"
        on_exit = call.get("onExit")
        if isinstance(on_exit, str) and on_exit not in ws.templates:
            yield (*loc, "onExit"), f"onExit template '{on_exit}' does not exist"
        yield from _check_hooks(ws, call.get("hooks"), (*loc, "hooks"))
        yield from _check_inputs_supplied(ws, call, loc, noun)


def _check_inputs_supplied(ws: WorkflowSpec, call: dict[str, Any], loc: Loc, noun: str) -> Iterator[Issue]:
    template = ws.template_of(call)
    if template is None:
        return
    supplied = names(dig(call, "arguments", "parameters"))
    for _, parameter in named(dig(template, "inputs", "parameters")):
        name = parameter.get("name")
        needs_value = "value" not in parameter and "default" not in parameter and "valueFrom" not in parameter
        if isinstance(name, str) and needs_value and name not in supplied:
            yield loc, f"{noun} '{call.get('name')}' does not supply input parameter '{name}' of its template"


def _check_steps(ws: WorkflowSpec, template: dict[str, Any], at: Loc) -> Iterator[Issue]:
    if "steps" in template:
        yield from _check_calls(ws, ((loc, step) for _, loc, step in step_calls(template, at)), "step")
