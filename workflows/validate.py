"""Strict schema validation and `argo lint`-style semantic checks of the manifests under argo/.

Schemas are the pinned upstream files in a directory (see `schema_fetch_commands`); none of them
rejects unknown fields, so each is made strict on load. Core Kubernetes kinds are checked with
the schemas shipped by `kubernetes-validate`.

Expression tags (`{{=...}}`) are checked loosely: only the references to `inputs.parameters`,
`workflow.parameters`, `tasks.*` and `steps.*` found in them are resolved; the rest of the
expression is not parsed.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as SchemaValidator
from referencing import Registry
from referencing.jsonschema import DRAFT7, DRAFT202012

from steps.errors import UserError

ARGO_WORKFLOWS_SCHEMA = "argo-workflows.schema.json"
ARGO_EVENTS_SCHEMA = "argo-events.schema.json"
KSERVE_CRD = "kserve-inferenceservice.crd.yaml"
KUBERNETES_VERSION = "1.33"

SCHEMA_SOURCES = {
    ARGO_WORKFLOWS_SCHEMA: "https://raw.githubusercontent.com/argoproj/argo-workflows/v4.1.2/api/jsonschema/schema.json",
    ARGO_EVENTS_SCHEMA: "https://raw.githubusercontent.com/argoproj/argo-events/v1.9.11/api/jsonschema/schema.json",
    KSERVE_CRD: "https://raw.githubusercontent.com/kserve/kserve/v0.20.0/config/crd/full/"
    "serving.kserve.io_inferenceservices.yaml",
}

ARGO_EVENTS_KINDS = frozenset({"EventBus", "EventSource", "Sensor"})
WORKFLOW_SPEC_KINDS = frozenset({"Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"})

Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]


def schema_fetch_commands(schemas_dir: Path) -> str:
    """One shell line that puts the pinned upstream schemas into `schemas_dir`."""
    commands = [f"mkdir -p {schemas_dir}"]
    commands += [f"curl -fsSL -o {schemas_dir / name} {url}" for name, url in SCHEMA_SOURCES.items()]
    return " && ".join(commands)


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


class SchemasMissing(UserError):
    """The pinned upstream schemas are not where the validator was told to look."""

    def __init__(self, schemas_dir: Path, what: str) -> None:
        super().__init__(
            f"offline validation needs the pinned upstream schemas, but {what}; "
            f"fetch them with: {schema_fetch_commands(schemas_dir)}"
        )


def json_path(loc: Iterable[str | int]) -> str:
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


# ---------------------------------------------------------------------------------------------
# Schema loading: make the upstream schemas strict
# ---------------------------------------------------------------------------------------------


def _subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schemas directly nested in `schema`, by keyword (never descending into values like `default`)."""
    for key in ("properties", "patternProperties", "definitions", "$defs"):
        for sub in (schema.get(key) or {}).values():
            if isinstance(sub, dict):
                yield sub
    for key in ("items", "additionalProperties", "not", "additionalItems", "contains"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            yield sub
        elif key == "items" and isinstance(sub, list):
            yield from (s for s in sub if isinstance(s, dict))
    for key in ("allOf", "anyOf", "oneOf"):
        yield from (s for s in schema.get(key) or [] if isinstance(s, dict))


def _each_schema(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = [schema]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_subschemas(node))


def _close_objects(schema: dict[str, Any]) -> None:
    """Reject unknown fields wherever an object lists its properties and does not preserve unknown ones."""
    for node in _each_schema(schema):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and "patternProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False


def _relax_scalars(definitions: dict[str, Any]) -> None:
    """IntOrString and Quantity are typed string-only upstream although the controllers take numbers."""
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"type": ["string", "integer", "number"]}


def _drop_webhook_url(definitions: dict[str, Any]) -> None:
    """The events controller does not require a webhook `url` although the schema does."""
    for name in ("io.argoproj.events.v1alpha1.WebhookContext", "io.argoproj.events.v1alpha1.WebhookEventSource"):
        definition = definitions[name]
        definition["required"] = [r for r in definition.get("required", []) if r != "url"]


def _openapi_to_jsonschema(schema: dict[str, Any]) -> None:
    """Give a CRD's structural OpenAPI v3 schema its Kubernetes meaning in JSON Schema terms."""
    for node in _each_schema(schema):
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node.pop("type", None)
            node["type"] = ["integer", "string"]
    _close_objects(schema)
    # The API server checks ObjectMeta itself; CRD schemas only say `type: object`.
    schema["properties"]["metadata"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "generateName": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


@dataclass(frozen=True)
class _SchemaSet:
    uri: str
    kinds: frozenset[str]  # definitions of top-level kinds (with x-kubernetes-group-version-kind)
    registry: Registry
    validator_class: Callable[..., SchemaValidator]

    def validator(self, definition: str) -> SchemaValidator:
        return self.validator_class({"$ref": f"{self.uri}#/definitions/{definition}"}, registry=self.registry)


def _argo_schema_set(
    document: dict[str, Any],
    uri: str,
    specification: Any,
    validator_class: Callable[..., SchemaValidator],
    fix: Callable[[dict[str, Any]], None],
) -> _SchemaSet:
    schema = copy.deepcopy(document)
    schema.pop("$id", None)  # resolve every $ref inside this copy, never against the upstream URL
    definitions = schema["definitions"]
    _relax_scalars(definitions)
    fix(definitions)
    _close_objects(schema)
    registry: Registry = Registry().with_resource(uri, specification.create_resource(schema))
    kinds = frozenset(name for name, d in definitions.items() if "x-kubernetes-group-version-kind" in d)
    return _SchemaSet(uri, kinds, registry, validator_class)


def _yaml_loader() -> Any:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _unknown_field(key: str, known: Iterable[str]) -> str:
    guess = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return f"unknown field '{key}'{hint}"


_JSON_TYPES: dict[type, str] = {str: "string", dict: "object", list: "array"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _error_issues(error: ValidationError, at: Loc) -> Iterator[Issue]:
    loc = at + tuple(error.absolute_path)
    if (
        error.validator == "additionalProperties"
        and error.validator_value is False
        and isinstance(error.instance, dict)
    ):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for key in sorted(k for k in error.instance if k not in known):
            yield (*loc, key), _unknown_field(key, known)
    elif error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        yield loc, f"expected {' or '.join(map(str, expected))}, got {_json_type(error.instance)}"
    else:
        message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
        yield loc, message


def _schema_issues(validator: SchemaValidator, doc: Any, at: Loc) -> list[Issue]:
    issues = [issue for error in validator.iter_errors(doc) for issue in _error_issues(error, at)]
    return sorted(issues, key=lambda issue: json_path(issue[0]))


# ---------------------------------------------------------------------------------------------
# The validator
# ---------------------------------------------------------------------------------------------


class Validator:
    """Validates manifests against the strict schemas, then runs the semantic checks of each kind."""

    def __init__(self, schemas_dir: Path) -> None:
        self.schemas_dir = Path(schemas_dir)
        if not self.schemas_dir.is_dir():
            raise SchemasMissing(self.schemas_dir, f"{self.schemas_dir} is not a directory")
        self._sets: dict[str, _SchemaSet] = {}
        self._validators: dict[tuple[str, str], SchemaValidator] = {}

    def validate(self, doc: dict[str, Any], file: str = "<memory>") -> list[Problem]:
        """Schema and semantic problems of one manifest; all of them, in document order per check."""
        return [Problem(file, json_path(loc), message) for loc, message in self._issues(doc, ())]

    # -- dispatch ------------------------------------------------------------------------------

    def _issues(self, doc: Any, at: Loc) -> list[Issue]:
        if not isinstance(doc, dict):
            return [(at, f"a manifest must be a mapping, got {_json_type(doc)}")]
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [(at, "a manifest needs string fields apiVersion and kind")]
        group = api_version.rpartition("/")[0]
        if group == "argoproj.io":
            return self._argo_issues(doc, kind, at)
        if group == "serving.kserve.io":
            if api_version != "serving.kserve.io/v1beta1" or kind != "InferenceService":
                return [(at, f"unknown KServe kind {api_version} {kind} (only v1beta1 InferenceService is known)")]
            return _schema_issues(self._kserve_validator(), doc, at)
        return _core_issues(doc, at)

    def _argo_issues(self, doc: dict[str, Any], kind: str, at: Loc) -> list[Issue]:
        if kind in ARGO_EVENTS_KINDS:
            issues = _schema_issues(self._validator("events", f"io.argoproj.events.v1alpha1.{kind}"), doc, at)
            if kind == "Sensor":
                issues += self._sensor_issues(doc, at)
            return issues
        definition = f"io.argoproj.workflow.v1alpha1.{kind}"
        if definition not in self._schema_set("workflows").kinds:
            return [(at, f"unknown Argo kind {doc['apiVersion']} {kind}")]
        issues = _schema_issues(self._validator("workflows", definition), doc, at)
        if kind in WORKFLOW_SPEC_KINDS:
            spec = doc.get("spec")
            spec_at: Loc = ("spec",)
            if kind == "CronWorkflow" and isinstance(spec, dict):
                spec, spec_at = spec.get("workflowSpec"), ("spec", "workflowSpec")
            if isinstance(spec, dict):
                needs_entrypoint = kind != "WorkflowTemplate" and kind != "ClusterWorkflowTemplate"
                issues += [(at + spec_at + loc, msg) for loc, msg in _spec_issues(spec, needs_entrypoint)]
        return issues

    def _sensor_issues(self, sensor: dict[str, Any], at: Loc) -> list[Issue]:
        """The resource an argoWorkflow/k8s trigger creates is validated as what it is, inside the Sensor."""
        issues: list[Issue] = []
        for i, trigger in _items(_dig(sensor, "spec", "triggers")):
            for kind in ("argoWorkflow", "k8s"):
                trigger_at = (*at, "spec", "triggers", i, "template", kind)
                body = _dig(trigger, "template", kind)
                resource = _dig(body, "source", "resource")
                if not isinstance(resource, dict):
                    continue
                issues += self._issues(resource, (*trigger_at, "source", "resource"))
                for j, parameter in _items(_dig(body, "parameters")):
                    dest = parameter.get("dest") if isinstance(parameter, dict) else None
                    problem = _dest_problem(resource, dest) if isinstance(dest, str) else None
                    if problem:
                        issues.append(((*trigger_at, "parameters", j, "dest"), problem))
        return issues

    # -- schema sets ---------------------------------------------------------------------------

    def _read(self, name: str) -> str:
        path = self.schemas_dir / name
        if not path.is_file():
            raise SchemasMissing(self.schemas_dir, f"{path} is missing")
        return path.read_text(encoding="utf-8")

    def _schema_set(self, which: str) -> _SchemaSet:
        if which not in self._sets:
            if which == "workflows":
                document = json.loads(self._read(ARGO_WORKFLOWS_SCHEMA))
                self._sets[which] = _argo_schema_set(
                    document, "urn:fashion-pipeline:argo-workflows", DRAFT202012, Draft202012Validator, lambda d: None
                )
            else:
                document = json.loads(self._read(ARGO_EVENTS_SCHEMA))
                self._sets[which] = _argo_schema_set(
                    document, "urn:fashion-pipeline:argo-events", DRAFT7, Draft7Validator, _drop_webhook_url
                )
        return self._sets[which]

    def _validator(self, which: str, definition: str) -> SchemaValidator:
        key = (which, definition)
        if key not in self._validators:
            self._validators[key] = self._schema_set(which).validator(definition)
        return self._validators[key]

    def _kserve_validator(self) -> SchemaValidator:
        key = ("kserve", "InferenceService")
        if key not in self._validators:
            crd = yaml.load(self._read(KSERVE_CRD), Loader=_yaml_loader())
            versions = [v for v in _dig(crd, "spec", "versions") or [] if v.get("name") == "v1beta1"]
            if not versions:
                raise SchemasMissing(self.schemas_dir, f"{KSERVE_CRD} has no v1beta1 version")
            schema = versions[0]["schema"]["openAPIV3Schema"]
            _openapi_to_jsonschema(schema)
            self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]


def _core_issues(doc: dict[str, Any], at: Loc) -> list[Issue]:
    """Core Kubernetes kinds, against the strict schemas that kubernetes-validate ships."""
    try:
        validator = _core_validator(doc["apiVersion"], doc["kind"])
    except ModuleNotFoundError:
        return [(at, f"cannot check {doc['kind']}: pip install kubernetes-validate")]
    if validator is None:
        return [(at, f"unknown apiVersion/kind {doc['apiVersion']} {doc['kind']} (Kubernetes {KUBERNETES_VERSION})")]
    return _schema_issues(validator, doc, at)


_CORE_VALIDATORS: dict[tuple[str, str], SchemaValidator | None] = {}


def _core_validator(api_version: str, kind: str) -> SchemaValidator | None:
    key = (api_version, kind)
    if key not in _CORE_VALIDATORS:
        from kubernetes_validate import utils

        version = [v for v in utils.all_versions() if _minor(v) <= _minor(KUBERNETES_VERSION)][-1]
        schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
        # Same file naming as kubernetes_validate.validate(), which stops at the first error.
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = utils.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
        except FileNotFoundError:
            _CORE_VALIDATORS[key] = None
            return None
        definitions = utils.schema_contents(f"{schema_dir}/_definitions.json", version)
        registry: Registry = Registry().with_resources([(definitions["$id"], DRAFT202012.create_resource(definitions))])
        _CORE_VALIDATORS[key] = Draft202012Validator(schema, registry=registry)
    return _CORE_VALIDATORS[key]


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _dest_problem(resource: dict[str, Any], dest: str) -> str | None:
    """A Sensor parameter `dest` must land on an existing object/array in the resource it patches."""
    node: Any = resource
    parts = dest.split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            where = ".".join(parts[:depth]) or "the resource"
            return f"dest '{dest}': {where} has no '{part}'"
    if isinstance(node, list) and not (parts[-1].isdigit() and int(parts[-1]) < len(node)):
        return f"dest '{dest}': index {parts[-1]} is past the end of a list of {len(node)}"
    return None


# ---------------------------------------------------------------------------------------------
# Small accessors for documents that may not match the schema
# ---------------------------------------------------------------------------------------------


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _items(node: Any) -> Iterator[tuple[int, Any]]:
    return enumerate(node) if isinstance(node, list) else iter(())


def _named(node: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, item) of the dict items of a list."""
    return ((i, item) for i, item in _items(node) if isinstance(item, dict))


def _names(node: Any) -> frozenset[str]:
    return frozenset(item["name"] for _, item in _named(node) if isinstance(item.get("name"), str))


def _strings(node: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(node, str):
        yield loc, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, (*loc, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, (*loc, i))


# ---------------------------------------------------------------------------------------------
# Semantic checks of a workflow spec (what `argo lint` adds to the schema)
# ---------------------------------------------------------------------------------------------

NAME_RE = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")
PARAM_NAME_RE = re.compile(r"^[-a-zA-Z0-9_]+$")
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
METRIC_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
LOOP_KEYS = ("withItems", "withParam", "withSequence")


@dataclass(frozen=True)
class _Workflow:
    spec: dict[str, Any]
    templates: dict[str, dict[str, Any]]
    parameters: frozenset[str]
    global_parameters: frozenset[str]
    global_artifacts: frozenset[str]

    @classmethod
    def of(cls, spec: dict[str, Any]) -> _Workflow:
        templates: dict[str, dict[str, Any]] = {}
        global_parameters: set[str] = set()
        global_artifacts: set[str] = set()
        for _, template in _named(spec.get("templates")):
            if isinstance(template.get("name"), str):
                templates.setdefault(template["name"], template)
            for _, p in _named(_dig(template, "outputs", "parameters")):
                if isinstance(p.get("globalName"), str):
                    global_parameters.add(p["globalName"])
            for _, a in _named(_dig(template, "outputs", "artifacts")):
                if isinstance(a.get("globalName"), str):
                    global_artifacts.add(a["globalName"])
        parameters = _names(_dig(spec, "arguments", "parameters"))
        return cls(spec, templates, parameters, frozenset(global_parameters), frozenset(global_artifacts))

    def template_of(self, node: dict[str, Any]) -> dict[str, Any] | None:
        """The template a task/step calls, when it is in this workflow."""
        if isinstance(node.get("inline"), dict):
            return node["inline"]
        name = node.get("template")
        return self.templates.get(name) if isinstance(name, str) and "templateRef" not in node else None


def _spec_issues(spec: dict[str, Any], needs_entrypoint: bool) -> Iterator[Issue]:
    ws = _Workflow.of(spec)
    yield from _check_template_names(spec)
    yield from _check_entrypoint_and_exit(ws, needs_entrypoint)
    yield from _check_metrics(spec.get("metrics"), ("metrics",))
    yield from _check_io_names(spec, ())
    yield from _check_variables(_without(spec, "templates", "templateDefaults"), (), _Scope(ws))
    for i, template in _named(spec.get("templates")):
        at: Loc = ("templates", i)
        dag = _Dag.of(body, (*at, "dag")) if isinstance(body := template.get("dag"), dict) else None
        yield from _check_io_names(template, at)
        yield from _check_metrics(template.get("metrics"), (*at, "metrics"))
        if dag is not None:
            yield from dag.issues
            tasks = _named(_dig(template, "dag", "tasks"))
            yield from _check_calls(ws, (((*at, "dag", "tasks", j), task) for j, task in tasks), "task")
        yield from _check_steps(ws, template, at)
        yield from _check_template_variables(ws, template, at, dag)
        yield from _check_skipped_outputs(ws, template, at, dag)


def _without(node: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in keys}


def _check_template_names(spec: dict[str, Any]) -> Iterator[Issue]:
    seen: set[str] = set()
    for i, template in _named(spec.get("templates")):
        name = template.get("name")
        if not isinstance(name, str):
            continue
        if not NAME_RE.match(name):
            yield ("templates", i, "name"), f"template name '{name}' must match {NAME_RE.pattern}"
        if name in seen:
            yield ("templates", i, "name"), f"template name '{name}' is used twice"
        seen.add(name)


def _check_entrypoint_and_exit(ws: _Workflow, needs_entrypoint: bool) -> Iterator[Issue]:
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


def _check_hooks(ws: _Workflow, hooks: Any, at: Loc) -> Iterator[Issue]:
    if not isinstance(hooks, dict):
        return
    for key, hook in hooks.items():
        name = _dig(hook, "template")
        if isinstance(name, str) and "templateRef" not in hook and name not in ws.templates:
            yield (*at, key, "template"), f"hook template '{name}' is not a template of this workflow"


def _check_metrics(metrics: Any, at: Loc) -> Iterator[Issue]:
    for i, metric in _named(_dig(metrics, "prometheus")):
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
        for j, label in _named(metric.get("labels")):
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
            for i, item in _named(_dig(node, section, kind)):
                name = item.get("name")
                if not isinstance(name, str):
                    continue
                loc = (*at, section, kind, i, "name")
                if not PARAM_NAME_RE.match(name):
                    yield loc, f"{kind[:-1]} name '{name}' must match {PARAM_NAME_RE.pattern}"
                if name in seen:
                    yield loc, f"{section}.{kind} names '{name}' twice"
                seen.add(name)


def _check_calls(ws: _Workflow, calls: Iterable[tuple[Loc, dict[str, Any]]], noun: str) -> Iterator[Issue]:
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


def _check_inputs_supplied(ws: _Workflow, call: dict[str, Any], loc: Loc, noun: str) -> Iterator[Issue]:
    template = ws.template_of(call)
    if template is None:
        return
    supplied = _names(_dig(call, "arguments", "parameters"))
    for _, parameter in _named(_dig(template, "inputs", "parameters")):
        name = parameter.get("name")
        needs_value = "value" not in parameter and "default" not in parameter and "valueFrom" not in parameter
        if isinstance(name, str) and needs_value and name not in supplied:
            yield loc, f"{noun} '{call.get('name')}' does not supply input parameter '{name}' of its template"


def _step_calls(template: dict[str, Any], at: Loc) -> Iterator[tuple[int, Loc, dict[str, Any]]]:
    """(group index, location, step) of a steps template."""
    for g, group in _items(template.get("steps")):
        for j, step in _named(group):
            yield g, (*at, "steps", g, j), step


def _check_steps(ws: _Workflow, template: dict[str, Any], at: Loc) -> Iterator[Issue]:
    if "steps" in template:
        yield from _check_calls(ws, ((loc, step) for _, loc, step in _step_calls(template, at)), "step")


# -- DAG: dependencies, depends expressions, cycles ---------------------------------------------


@dataclass(frozen=True)
class _Ref:
    task: str
    result: str | None


@dataclass(frozen=True)
class _Not:
    operand: _Cond


@dataclass(frozen=True)
class _BinOp:
    op: str  # "&&" or "||"
    left: _Cond
    right: _Cond


_Cond = _Ref | _Not | _BinOp

TASK_RESULTS: dict[str, frozenset[str]] = {
    "Succeeded": frozenset({"Succeeded"}),
    "Failed": frozenset({"Failed"}),
    "Errored": frozenset({"Errored"}),
    "Skipped": frozenset({"Skipped"}),
    "Omitted": frozenset({"Omitted"}),
    "Daemoned": frozenset({"Daemoned"}),
    "Completed": frozenset({"Succeeded", "Failed"}),
    "AnySucceeded": frozenset({"Succeeded"}),
    "AllFailed": frozenset({"Failed"}),
}
# `depends: task` without a result means this (the `dependencies` meaning).
PLAIN_DEPENDENCY = frozenset({"Succeeded", "Skipped", "Daemoned"})
_DEPENDS_TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\))|([a-zA-Z0-9][-a-zA-Z0-9]*)(?:\.([A-Za-z]+))?)")


def parse_depends(text: str) -> _Cond:
    """Parse an enhanced `depends` expression; ValueError says what is wrong."""
    tokens: list[tuple[str, str, str | None]] = []
    pos = 0
    while pos < len(text.rstrip()):
        match = _DEPENDS_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"unexpected {text[pos:].strip()[:20]!r} at column {pos + 1}")
        operator, task, result = match.groups()
        if result is not None and result not in TASK_RESULTS:
            raise ValueError(f"unknown task result '.{result}' (one of {', '.join(TASK_RESULTS)})")
        tokens.append(("op", operator, None) if operator else ("task", task, result))
        pos = match.end()
    cond, rest = _parse_or(tokens)
    if rest:
        raise ValueError(f"unexpected '{rest[0][1]}'")
    return cond


_Tokens = list[tuple[str, str, str | None]]


def _parse_or(tokens: _Tokens) -> tuple[_Cond, _Tokens]:
    left, rest = _parse_and(tokens)
    while rest and rest[0][:2] == ("op", "||"):
        right, rest = _parse_and(rest[1:])
        left = _BinOp("||", left, right)
    return left, rest


def _parse_and(tokens: _Tokens) -> tuple[_Cond, _Tokens]:
    left, rest = _parse_unary(tokens)
    while rest and rest[0][:2] == ("op", "&&"):
        right, rest = _parse_unary(rest[1:])
        left = _BinOp("&&", left, right)
    return left, rest


def _parse_unary(tokens: _Tokens) -> tuple[_Cond, _Tokens]:
    if not tokens:
        raise ValueError("expression ends early")
    kind, value, result = tokens[0]
    if kind == "task":
        return _Ref(value, result), tokens[1:]
    if value == "!":
        operand, rest = _parse_unary(tokens[1:])
        return _Not(operand), rest
    if value == "(":
        inner, rest = _parse_or(tokens[1:])
        if not rest or rest[0][:2] != ("op", ")"):
            raise ValueError("missing ')'")
        return inner, rest[1:]
    raise ValueError(f"unexpected '{value}'")


def _cond_tasks(cond: _Cond) -> Iterator[str]:
    if isinstance(cond, _Ref):
        yield cond.task
    elif isinstance(cond, _Not):
        yield from _cond_tasks(cond.operand)
    else:
        yield from _cond_tasks(cond.left)
        yield from _cond_tasks(cond.right)


def evaluate_depends(cond: _Cond, phases: dict[str, str]) -> bool:
    """Whether a task whose dependencies ended in `phases` runs (unknown tasks count as Succeeded)."""
    if isinstance(cond, _Ref):
        phase = phases.get(cond.task, "Succeeded")
        return phase in (PLAIN_DEPENDENCY if cond.result is None else TASK_RESULTS[cond.result])
    if isinstance(cond, _Not):
        return not evaluate_depends(cond.operand, phases)
    if cond.op == "&&":
        return evaluate_depends(cond.left, phases) and evaluate_depends(cond.right, phases)
    return evaluate_depends(cond.left, phases) or evaluate_depends(cond.right, phases)


@dataclass
class _Dag:
    at: Loc
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    locs: dict[str, Loc] = field(default_factory=dict)
    conditions: dict[str, _Cond] = field(default_factory=dict)
    parents: dict[str, set[str]] = field(default_factory=dict)
    order: list[str] | None = None
    issues: list[Issue] = field(default_factory=list)

    @classmethod
    def of(cls, dag: dict[str, Any], at: Loc) -> _Dag:
        self = cls(at)
        for i, task in _named(dag.get("tasks")):
            name = task.get("name")
            if isinstance(name, str) and name not in self.tasks:
                self.tasks[name], self.locs[name] = task, (*at, "tasks", i)
        self._read_dependencies()
        self._sort()
        return self

    def _read_dependencies(self) -> None:
        styles: set[str] = set()
        for name, task in self.tasks.items():
            cond: _Cond | None = None
            dependencies = task.get("dependencies")
            if isinstance(dependencies, list) and dependencies:
                styles.add("dependencies")
                for dep in dependencies:
                    ref = _Ref(str(dep), None)
                    cond = ref if cond is None else _BinOp("&&", cond, ref)
            depends = task.get("depends")
            if isinstance(depends, str) and depends.strip():
                styles.add("depends")
                try:
                    parsed = parse_depends(depends)
                except ValueError as e:
                    self.issues.append((self.locs[name] + ("depends",), f"cannot parse depends {depends!r}: {e}"))
                else:
                    cond = parsed if cond is None else _BinOp("&&", cond, parsed)
            if cond is None:
                self.parents[name] = set()
                continue
            self.conditions[name] = cond
            parents = set(_cond_tasks(cond))
            for missing in sorted(parents - set(self.tasks)):
                key = "depends" if "depends" in task else "dependencies"
                self.issues.append((self.locs[name] + (key,), f"task '{name}' depends on '{missing}', no such task"))
            self.parents[name] = parents & set(self.tasks)
        if len(styles) == 2:
            self.issues.append((self.at, "a DAG cannot use both 'depends' and 'dependencies'"))

    def _sort(self) -> None:
        order: list[str] = []
        state: dict[str, str] = {}
        cycles: set[frozenset[str]] = set()

        def visit(name: str, stack: list[str]) -> None:
            state[name] = "active"
            stack.append(name)
            for parent in sorted(self.parents[name]):
                if state.get(parent) == "active":
                    cycle = [*stack[stack.index(parent) :], parent]
                    if frozenset(cycle) not in cycles:
                        cycles.add(frozenset(cycle))
                        self.issues.append((self.locs[parent], f"dependency cycle: {' -> '.join(reversed(cycle))}"))
                elif parent not in state:
                    visit(parent, stack)
            stack.pop()
            state[name] = "done"
            order.append(name)

        for name in self.tasks:
            if name not in state:
                visit(name, [])
        self.order = None if cycles else order

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.parents.get(name, ()))
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(self.parents.get(parent, ()))
        return seen

    def phases_when_skipped(self, skipped: str) -> dict[str, str]:
        """Phase of every task when `skipped` is Skipped and every other `when` holds."""
        assert self.order is not None
        phases: dict[str, str] = {}
        for name in self.order:
            cond = self.conditions.get(name)
            if name == skipped:
                phases[name] = "Skipped"
            elif cond is not None and not evaluate_depends(cond, phases):
                phases[name] = "Omitted"
            else:
                phases[name] = "Succeeded"
        return phases


# -- variables: every {{...}} resolves ------------------------------------------------------------

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
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
class _Scope:
    ws: _Workflow
    template: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None  # "tasks" in a DAG, "steps" in a steps template
    current: str = ""
    siblings: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> called template
    visible: frozenset[str] = frozenset()
    item: bool = False
    metrics: bool = False


def tag_references(text: str) -> Iterator[str]:
    """Dotted references in the `{{...}}` tags of a string (for expressions: the ones we check)."""
    for match in _TAG.finditer(text):
        body = match.group(1).strip()
        if not body.startswith("="):
            yield body
            continue
        for ref in _EXPR_REF.finditer(body[1:]):
            segments = [next(g for g in seg.groups() if g is not None) for seg in _EXPR_SEGMENT.finditer(ref.group(2))]
            yield ".".join([ref.group(1), *segments])


def _resolve(ref: str, scope: _Scope) -> str | None:
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


def _resolve_workflow(rest: str, ws: _Workflow) -> str | None:
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


def _resolve_io(head: str, rest: str, scope: _Scope) -> str | None:
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
    if name not in _names(_dig(scope.template, head, kind)):
        return f"template '{scope.template.get('name')}' declares no {head}.{kind} '{name}'"
    return None


def _resolve_sibling(kind: str, rest: str, scope: _Scope) -> str | None:
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
    if template is not None and output not in _names(_dig(template, "outputs", section)):
        return f"template '{template.get('name')}' of {noun} '{name}' declares no output {section[:-1]} '{output}'"
    return None


def _check_variables(node: Any, at: Loc, scope: _Scope) -> Iterator[Issue]:
    for loc, text in _strings(node, at):
        for ref in tag_references(text):
            why = _resolve(ref, scope)
            if why:
                yield loc, f"cannot resolve {{{{{ref}}}}}: {why}"


def _check_template_variables(ws: _Workflow, template: dict[str, Any], at: Loc, dag: _Dag | None) -> Iterator[Issue]:
    base = _Scope(ws, template)
    yield from _check_variables(_without(template, "dag", "steps", "outputs", "metrics"), at, base)
    yield from _check_variables(template.get("metrics"), (*at, "metrics"), replace(base, metrics=True))
    outputs_scope = base
    if dag is not None:
        siblings = {name: ws.template_of(task) for name, task in dag.tasks.items()}
        yield from _check_variables(_without(template["dag"], "tasks"), (*at, "dag"), base)
        for name, task in dag.tasks.items():
            visible = frozenset(dag.ancestors(name))
            scope = replace(base, kind="tasks", current=name, siblings=siblings, visible=visible, item=_loops(task))
            loc = dag.locs[name]
            yield from _check_variables(_without(task, "hooks"), loc, scope)
            hooks_scope = replace(scope, visible=visible | {name})
            yield from _check_variables(task.get("hooks"), (*loc, "hooks"), hooks_scope)
        outputs_scope = replace(base, kind="tasks", current="outputs", siblings=siblings, visible=frozenset(siblings))
    elif "steps" in template:
        steps = list(_step_calls(template, at))
        siblings = {str(step.get("name")): ws.template_of(step) for _, _, step in steps}
        for group, loc, step in steps:
            earlier = frozenset(str(s.get("name")) for g, _, s in steps if g < group)
            scope = replace(
                base, kind="steps", current=str(step.get("name")), siblings=siblings, visible=earlier, item=_loops(step)
            )
            yield from _check_variables(step, loc, scope)
        outputs_scope = replace(base, kind="steps", current="outputs", siblings=siblings, visible=frozenset(siblings))
    yield from _check_variables(template.get("outputs"), (*at, "outputs"), outputs_scope)


def _loops(call: dict[str, Any]) -> bool:
    return any(key in call for key in LOOP_KEYS)


# -- reading outputs of a task that may be Skipped ------------------------------------------------


def _output_reads(node: Any, at: Loc, kind: str) -> Iterator[tuple[Loc, str, str]]:
    """(location, task/step, parameter) for each `{{<kind>.T.outputs.parameters.P}}` in node."""
    for loc, text in _strings(node, at):
        for ref in tag_references(text):
            parts = ref.split(".")
            if len(parts) == 5 and parts[0] == kind and parts[2:4] == ["outputs", "parameters"]:
                yield loc, parts[1], parts[4]


def _has_default(template: dict[str, Any] | None, parameter: str) -> bool:
    """Unknown templates (templateRef) get the benefit of the doubt."""
    if template is None:
        return True
    for _, declared in _named(_dig(template, "outputs", "parameters")):
        if declared.get("name") == parameter:
            value_from = declared.get("valueFrom")
            return isinstance(value_from, dict) and "default" in value_from
    return True  # an undeclared output is reported by the variable check


def _check_skipped_outputs(ws: _Workflow, template: dict[str, Any], at: Loc, dag: _Dag | None) -> Iterator[Issue]:
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
        steps = {str(step.get("name")): step for _, _, step in _step_calls(template, at)}
        readers_at: list[tuple[Loc, Any]] = [(loc, step) for _, loc, step in _step_calls(template, at)]
        readers_at.append(((*at, "outputs"), template.get("outputs")))
        for node_at, node in readers_at:
            for loc, producer, parameter in _output_reads(node, node_at, "steps"):
                step = steps.get(producer)
                called = ws.template_of(step) if step else None
                if step and "when" in step and not _has_default(called, parameter):
                    if (loc, producer, parameter) not in reported:
                        yield issue(loc, producer, parameter, "has a when", called)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def lint_paths(paths: list[Path], schemas_dir: Path) -> list[Problem]:
    """Every problem in the YAML files named or found (sorted) under the directories named."""
    validator = Validator(schemas_dir)
    problems: list[Problem] = []
    for root in paths:
        if not root.exists():
            problems.append(Problem(str(root), "$", "no such file or directory"))
            continue
        for path in _yaml_files(root):
            problems += _lint_file(validator, path)
    return problems


def _lint_file(validator: Validator, path: Path) -> list[Problem]:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        docs = [doc for doc in yaml.load_all(text, Loader=_yaml_loader()) if doc is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(e, "problem", None) or str(e)
        return [Problem(name, "$", f"YAML syntax error{where}: {reason}")]
    except (OSError, UnicodeDecodeError) as e:
        return [Problem(name, "$", f"cannot read: {e}")]
    problems: list[Problem] = []
    for i, doc in enumerate(docs):
        found = validator.validate(doc, name)
        problems += [replace(p, path=f"doc[{i}]:{p.path}") for p in found] if len(docs) > 1 else found
    return problems
