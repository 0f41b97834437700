"""The manifest the local engine runs: read it, refuse by name what it cannot execute, bind its arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steps.errors import UserError
from workflows.argo_expressions import dependency_problems, task_condition

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


class UnsupportedConstruct(UserError):
    """The workflow uses something the local engine does not execute."""


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
            tasks = {task.get("name"): task for task in template["dag"].get("tasks", [])}
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
                _check_dependencies(task, tasks, task_where)
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


def _check_dependencies(task: dict[str, Any], tasks: dict[str, Any], where: str) -> None:
    """A task's `depends` parses and names tasks of its DAG, as `argo lint` demands."""
    try:
        cond = task_condition(task)
    except ValueError as exc:
        raise UserError(f"{where}.depends {task['depends']!r}: {exc}") from exc
    problem = next(dependency_problems(task["name"], cond, tasks), None) if cond is not None else None
    if problem:
        raise UserError(f"{where}: {problem}")


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
