"""The validator: a manifest against the strict schema of its apiVersion and kind, then its kind's semantic checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.protocols import Validator as SchemaValidator
from referencing.jsonschema import DRAFT7, DRAFT202012

from workflows.validate.documents import Issue, Loc, dig, items, json_path
from workflows.validate.schemas import (
    ARGO_EVENTS_SCHEMA,
    ARGO_WORKFLOWS_SCHEMA,
    KSERVE_CRD,
    KUBERNETES_VERSION,
    SchemaSet,
    SchemasMissing,
    argo_schema_set,
    core_validator,
    drop_webhook_url,
    json_type,
    openapi_to_jsonschema,
    schema_issues,
    yaml_loader,
)
from workflows.validate.spec import spec_issues

ARGO_EVENTS_KINDS = frozenset({"EventBus", "EventSource", "Sensor"})
WORKFLOW_SPEC_KINDS = frozenset({"Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"})


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


class Validator:
    """Validates manifests against the strict schemas, then runs the semantic checks of each kind."""

    def __init__(self, schemas_dir: Path) -> None:
        self.schemas_dir = Path(schemas_dir)
        if not self.schemas_dir.is_dir():
            raise SchemasMissing(self.schemas_dir, f"{self.schemas_dir} is not a directory")
        self._sets: dict[str, SchemaSet] = {}
        self._validators: dict[tuple[str, str], SchemaValidator] = {}

    def validate(self, doc: dict[str, Any], file: str = "<memory>") -> list[Problem]:
        """Schema and semantic problems of one manifest; all of them, in document order per check."""
        return [Problem(file, json_path(loc), message) for loc, message in self._issues(doc, ())]

    # -- dispatch ------------------------------------------------------------------------------

    def _issues(self, doc: Any, at: Loc) -> list[Issue]:
        if not isinstance(doc, dict):
            return [(at, f"a manifest must be a mapping, got {json_type(doc)}")]
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [(at, "a manifest needs string fields apiVersion and kind")]
        group = api_version.rpartition("/")[0]
        if group == "argoproj.io":
            return self._argo_issues(doc, kind, at)
        if group == "serving.kserve.io":
            if api_version != "serving.kserve.io/v1beta1" or kind != "InferenceService":
                return [(at, f"unknown KServe kind {api_version} {kind} (only v1beta1 InferenceService is known)")]
            return schema_issues(self._kserve_validator(), doc, at)
        return _core_issues(doc, at)

    def _argo_issues(self, doc: dict[str, Any], kind: str, at: Loc) -> list[Issue]:
        if kind in ARGO_EVENTS_KINDS:
            issues = schema_issues(self._validator("events", f"io.argoproj.events.v1alpha1.{kind}"), doc, at)
            if kind == "Sensor":
                issues += self._sensor_issues(doc, at)
            return issues
        definition = f"io.argoproj.workflow.v1alpha1.{kind}"
        if definition not in self._schema_set("workflows").kinds:
            return [(at, f"unknown Argo kind {doc['apiVersion']} {kind}")]
        issues = schema_issues(self._validator("workflows", definition), doc, at)
        if kind in WORKFLOW_SPEC_KINDS:
            spec = doc.get("spec")
            spec_at: Loc = ("spec",)
            if kind == "CronWorkflow" and isinstance(spec, dict):
                spec, spec_at = spec.get("workflowSpec"), ("spec", "workflowSpec")
            if isinstance(spec, dict):
                needs_entrypoint = kind != "WorkflowTemplate" and kind != "ClusterWorkflowTemplate"
                issues += [(at + spec_at + loc, msg) for loc, msg in spec_issues(spec, needs_entrypoint)]
        return issues

    def _sensor_issues(self, sensor: dict[str, Any], at: Loc) -> list[Issue]:
        """The resource an argoWorkflow/k8s trigger creates is validated as what it is, inside the Sensor."""
        issues: list[Issue] = []
        for i, trigger in items(dig(sensor, "spec", "triggers")):
            for kind in ("argoWorkflow", "k8s"):
                trigger_at = (*at, "spec", "triggers", i, "template", kind)
                body = dig(trigger, "template", kind)
                resource = dig(body, "source", "resource")
                if not isinstance(resource, dict):
                    continue
                issues += self._issues(resource, (*trigger_at, "source", "resource"))
                for j, parameter in items(dig(body, "parameters")):
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

    def _schema_set(self, which: str) -> SchemaSet:
        if which not in self._sets:
            if which == "workflows":
                document = json.loads(self._read(ARGO_WORKFLOWS_SCHEMA))
                self._sets[which] = argo_schema_set(
                    document, "urn:fashion-pipeline:argo-workflows", DRAFT202012, Draft202012Validator, lambda d: None
                )
            else:
                document = json.loads(self._read(ARGO_EVENTS_SCHEMA))
                self._sets[which] = argo_schema_set(
                    document, "urn:fashion-pipeline:argo-events", DRAFT7, Draft7Validator, drop_webhook_url
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
            crd = yaml.load(self._read(KSERVE_CRD), Loader=yaml_loader())
            versions = [v for v in dig(crd, "spec", "versions") or [] if v.get("name") == "v1beta1"]
            if not versions:
                raise SchemasMissing(self.schemas_dir, f"{KSERVE_CRD} has no v1beta1 version")
            schema = versions[0]["schema"]["openAPIV3Schema"]
            openapi_to_jsonschema(schema)
            self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]


def _core_issues(doc: dict[str, Any], at: Loc) -> list[Issue]:
    """Core Kubernetes kinds, against the strict schemas that kubernetes-validate ships."""
    try:
        validator = core_validator(doc["apiVersion"], doc["kind"])
    except ModuleNotFoundError:
        return [(at, f"cannot check {doc['kind']}: pip install kubernetes-validate")]
    if validator is None:
        return [(at, f"unknown apiVersion/kind {doc['apiVersion']} {doc['kind']} (Kubernetes {KUBERNETES_VERSION})")]
    return schema_issues(validator, doc, at)


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
