"""The pinned upstream schemas, made strict on load; schema errors as issues at their location.

None of the upstream schemas rejects unknown fields: every object that lists its properties and
does not preserve unknown fields is closed. Core Kubernetes kinds use the strict schemas that
`kubernetes-validate` ships.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as SchemaValidator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from steps.errors import UserError
from workflows.validate.documents import Issue, Loc, json_path

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


def schema_fetch_commands(schemas_dir: Path) -> str:
    """One shell line that puts the pinned upstream schemas into `schemas_dir`."""
    commands = [f"mkdir -p {schemas_dir}"]
    commands += [f"curl -fsSL -o {schemas_dir / name} {url}" for name, url in SCHEMA_SOURCES.items()]
    return " && ".join(commands)


class SchemasMissing(UserError):
    """The pinned upstream schemas are not where the validator was told to look."""

    def __init__(self, schemas_dir: Path, what: str) -> None:
        super().__init__(
            f"offline validation needs the pinned upstream schemas, but {what}; "
            f"fetch them with: {schema_fetch_commands(schemas_dir)}"
        )


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


def drop_webhook_url(definitions: dict[str, Any]) -> None:
    """The events controller does not require a webhook `url` although the schema does."""
    for name in ("io.argoproj.events.v1alpha1.WebhookContext", "io.argoproj.events.v1alpha1.WebhookEventSource"):
        definition = definitions[name]
        definition["required"] = [r for r in definition.get("required", []) if r != "url"]


def openapi_to_jsonschema(schema: dict[str, Any]) -> None:
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
class SchemaSet:
    uri: str
    kinds: frozenset[str]  # definitions of top-level kinds (with x-kubernetes-group-version-kind)
    registry: Registry
    validator_class: Callable[..., SchemaValidator]

    def validator(self, definition: str) -> SchemaValidator:
        return self.validator_class({"$ref": f"{self.uri}#/definitions/{definition}"}, registry=self.registry)


def argo_schema_set(
    document: dict[str, Any],
    uri: str,
    specification: Any,
    validator_class: Callable[..., SchemaValidator],
    fix: Callable[[dict[str, Any]], None],
) -> SchemaSet:
    schema = copy.deepcopy(document)
    schema.pop("$id", None)  # resolve every $ref inside this copy, never against the upstream URL
    definitions = schema["definitions"]
    _relax_scalars(definitions)
    fix(definitions)
    _close_objects(schema)
    registry: Registry = Registry().with_resource(uri, specification.create_resource(schema))
    kinds = frozenset(name for name, d in definitions.items() if "x-kubernetes-group-version-kind" in d)
    return SchemaSet(uri, kinds, registry, validator_class)


def yaml_loader() -> Any:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _unknown_field(key: str, known: Iterable[str]) -> str:
    guess = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return f"unknown field '{key}'{hint}"


_JSON_TYPES: dict[type, str] = {str: "string", dict: "object", list: "array"}


def json_type(value: Any) -> str:
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
        yield loc, f"expected {' or '.join(map(str, expected))}, got {json_type(error.instance)}"
    else:
        message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
        yield loc, message


def schema_issues(validator: SchemaValidator, doc: Any, at: Loc) -> list[Issue]:
    issues = [issue for error in validator.iter_errors(doc) for issue in _error_issues(error, at)]
    return sorted(issues, key=lambda issue: json_path(issue[0]))


_CORE_VALIDATORS: dict[tuple[str, str], SchemaValidator | None] = {}


def core_validator(api_version: str, kind: str) -> SchemaValidator | None:
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
