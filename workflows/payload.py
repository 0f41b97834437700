"""The retrain webhook's payload contract: `retrain-payload.schema.json`, its checks and the arguments it sets.

The schema file is the single source: the local receiver validates with it, and the Sensor in
workflows/events.py (filters and parameters) is generated from it. An event decides only what the
schema lists; every other workflow argument (the gate and rollout policy, the store, the target)
is the operator's, and a payload naming one is refused with that said. An event's `data_url` must
also start with one of the operator's allowed prefixes: the same list feeds the Sensor's filter.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from steps.errors import UserError
from workflows import pipeline

SCHEMA_PATH = Path(__file__).with_name("retrain-payload.schema.json")
EVENT_ID = "event_id"
DATA_URL = "data_url"
# What an event may name by default: no file:// (the pod's own files) and no plain http:// (internal
# services); the operator changes the list with --allow-data-url, the cluster's in this constant.
DEFAULT_DATA_URL_PREFIXES = ("https://", "s3://")
# Dot segments, percent-encoded dots and backslashes could climb out of an allowed prefix.
UNSAFE_URL = re.compile(r"/\.\.?(/|\Z)|%2e|\\", re.IGNORECASE)


@cache
def _schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema())


def load_payload_schema() -> dict[str, Any]:
    """The payload JSON Schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(_schema())


def validate_payload(body: Any, data_url_prefixes: Iterable[str] = DEFAULT_DATA_URL_PREFIXES) -> list[str]:
    """Every violation of the contract, one line each, naming the field; empty when the payload is valid."""
    if not isinstance(body, dict):
        return [f"the payload must be a JSON object, got {type(body).__name__}"]
    messages: set[str] = set()
    for error in _validator().iter_errors(body):
        messages.update(violation_messages(error, body))
    url = body.get(DATA_URL)
    if isinstance(url, str) and not any(m.startswith(f"{DATA_URL}:") for m in messages):
        problem = data_url_problem(url, tuple(data_url_prefixes))
        if problem:
            messages.add(problem)
    return sorted(messages)


def data_url_problem(url: str, prefixes: tuple[str, ...]) -> str | None:
    """Why an event may not name this `data_url` (None: it may)."""
    if not url.startswith(prefixes):
        allowed = ", ".join(prefixes) or "none"
        return (
            f"{DATA_URL}: {url!r} is not allowed from an event: the allowed prefixes are {allowed} "
            "(the operator sets them with --allow-data-url)"
        )
    if UNSAFE_URL.search(url):
        return f"{DATA_URL}: must not contain '.' or '..' path segments, percent-encoded dots or backslashes"
    return None


def check_data_url_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The operator's --allow-data-url list, each prefix one that matches only what it says."""
    url_spec = Draft202012Validator(_schema()["properties"][DATA_URL])
    checked: list[str] = []
    for prefix in prefixes:
        rest = prefix.partition("://")[2]
        if not url_spec.is_valid(prefix + "x"):
            raise UserError(
                f"--allow-data-url {prefix!r}: not a URL prefix the fetch step reads "
                "(https://, http://, s3:// or file://, no spaces)"
            )
        if rest and not rest.endswith("/"):
            raise UserError(
                f"--allow-data-url {prefix!r}: end it with '/' so that {prefix}.example or {prefix}-other "
                f"does not match too (e.g. {prefix}/)"
            )
        if UNSAFE_URL.search(prefix):
            raise UserError(f"--allow-data-url {prefix!r}: no '.' or '..' segments, encoded dots or backslashes")
        checked.append(prefix)
    return tuple(dict.fromkeys(checked))


def operator_arguments() -> tuple[str, ...]:
    """The workflow arguments no event may set: everything the contract does not list."""
    fields = _schema()["properties"]
    return tuple(argument.name for argument in pipeline.ARGUMENTS if argument.name not in fields)


def violation_messages(error: ValidationError, body: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """One line per violation, naming the field; `schema` is the contract violated (default: the payload's)."""
    field = ".".join(str(part) for part in error.absolute_path)
    known = list((schema or _schema())["properties"])
    if error.validator == "required" and isinstance(error.validator_value, list):
        return [f"{name}: required" for name in error.validator_value if name not in body]
    if error.validator == "additionalProperties":
        out = []
        for key in sorted(k for k in body if k not in known):
            if key in operator_arguments():
                out.append(
                    f"{key}: refused: the gate and rollout policy (and the store and target) is set by the "
                    f"operator, not by an event (`-p {key}=...` on `fashion-pipeline webhook`/`up`, "
                    "or the WorkflowTemplate's default on a cluster)"
                )
                continue
            guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{guess[0]}'?" if guess else f"the fields are {', '.join(known)}"
            out.append(f"{key}: unknown field ({hint})")
        return out
    if error.validator == "not":
        return [f"{field}: must not contain a line break"]
    if error.validator == "pattern":
        return [f"{field}: {error.instance!r} does not match {error.validator_value}"]
    return [f"{field}: {error.message}"]


def payload_to_parameters(
    body: dict[str, Any], data_url_prefixes: Iterable[str] = DEFAULT_DATA_URL_PREFIXES
) -> dict[str, str]:
    """The workflow arguments a valid payload sets, as Argo strings (event_id names the run; it is no argument)."""
    problems = validate_payload(body, data_url_prefixes)
    if problems:
        raise UserError(f"invalid retrain payload: {'; '.join(problems)}")
    parameters = {}
    for name, spec in _schema()["properties"].items():
        if name == EVENT_ID:
            continue
        if name in body:
            parameters[name] = argo_string(body[name])
        elif "default" in spec:
            parameters[name] = argo_string(spec["default"])
    return parameters


def argo_string(value: bool | int | float | str) -> str:
    """A JSON scalar as the string Argo Events makes of it (gjson), so the Sensor and the receiver agree.

    Booleans are `true`/`false`; integers are verbatim; any other number is written in the
    shortest positional form that reads back the same (1.0 -> `1`, 1e-05 -> `0.00001`).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return value
