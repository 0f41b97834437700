"""Strict schema validation and `argo lint`-style semantic checks of the manifests under argo/.

Schemas are the pinned upstream files in a directory (see `schema_fetch_commands`); none of them
rejects unknown fields, so each is made strict on load (schemas.py). Core Kubernetes kinds are
checked with the schemas shipped by `kubernetes-validate`. kinds.py dispatches a manifest by kind;
spec.py, dag.py and variables.py check a workflow spec beyond its schema.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from workflows.validate.kinds import Problem, Validator
from workflows.validate.schemas import SCHEMA_SOURCES, SchemasMissing, schema_fetch_commands, yaml_loader

__all__ = ["SCHEMA_SOURCES", "Problem", "SchemasMissing", "Validator", "lint_paths", "schema_fetch_commands"]


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
        docs = [doc for doc in yaml.load_all(text, Loader=yaml_loader()) if doc is not None]
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
