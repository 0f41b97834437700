"""Argo's expression grammars, written once: `{{...}}` tags, DAG `depends` and `when`.

The local engine evaluates them against the phases of the nodes it ran; the linter parses the same
`depends` to find the tasks and results it references. Upstream files are argoproj/argo-workflows
at tag v4.1.2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from steps.errors import UserError

# -- {{...}} tags --------------------------------------------------------------------------------

# util/template/template.go: fasttemplate with `{{` and `}}`, a tag ending at the first `}}`;
# simple_template.go looks the tag up with its surrounding space trimmed; a leading `=` makes it an
# expression tag (kind.go).
_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)


def tags(text: str) -> Iterator[str]:
    """The trimmed bodies of the `{{...}}` tags in `text`."""
    return (match.group(1).strip() for match in _TAG.finditer(text))


def replace_tags(text: str, value: Callable[[str], str]) -> str:
    """`text` with each tag replaced by `value(trimmed body)`."""
    return _TAG.sub(lambda match: value(match.group(1).strip()), text)


# -- depends -------------------------------------------------------------------------------------

LOOP_KEYS = ("withItems", "withParam", "withSequence")  # a task or step with one of these loops over items
# workflow/common/ancestry.go ValidateTaskResults: the results a `depends` may name.
TASK_RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed")
ITEMS_RESULTS = frozenset({"AnySucceeded", "AllFailed"})  # of a task with items (a task group) only
# workflow/controller/dag.go evaluateDependsLogic: the result each node phase gives.
_PHASE_RESULTS = {
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Error": "Errored",
    "Skipped": "Skipped",
    "Omitted": "Omitted",
}
# ancestry.go expandDependency: a bare `task` (and each name in `dependencies`) is
# `(task.Succeeded || task.Skipped || task.Daemoned)`.
BARE_TASK = frozenset({"Succeeded", "Skipped", "Daemoned"})


@dataclass(frozen=True)
class TaskRef:
    task: str
    result: str | None  # None for a bare task name


@dataclass(frozen=True)
class Not:
    operand: Condition


@dataclass(frozen=True)
class BinOp:
    op: str  # "&&" or "||"
    left: Condition
    right: Condition


Condition = TaskRef | Not | BinOp
_Tokens = list[tuple[str, str, str | None]]
# A task name is a template/task name (`[a-zA-Z0-9][-a-zA-Z0-9]*`); ancestry.go taskNameRegex.
_DEPENDS_TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\))|([a-zA-Z0-9][-a-zA-Z0-9]*)(?:\.([A-Za-z]+))?)")


def parse_depends(text: str) -> Condition:
    """Parse a `depends` expression (docs/enhanced-depends-logic.md); ValueError says what is wrong."""
    tokens: _Tokens = []
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


def _parse_or(tokens: _Tokens) -> tuple[Condition, _Tokens]:
    return _parse_chain(tokens, "||", _parse_and)


def _parse_and(tokens: _Tokens) -> tuple[Condition, _Tokens]:
    return _parse_chain(tokens, "&&", _parse_unary)


def _parse_chain(
    tokens: _Tokens, op: str, operand: Callable[[_Tokens], tuple[Condition, _Tokens]]
) -> tuple[Condition, _Tokens]:
    """Operands joined by `op`, left-associative (`||` binds looser than `&&`, which binds looser than `!`)."""
    left, rest = operand(tokens)
    while rest and rest[0][:2] == ("op", op):
        right, rest = operand(rest[1:])
        left = BinOp(op, left, right)
    return left, rest


def _parse_unary(tokens: _Tokens) -> tuple[Condition, _Tokens]:
    if not tokens:
        raise ValueError("expression ends early")
    kind, value, result = tokens[0]
    if kind == "task":
        return TaskRef(value, result), tokens[1:]
    if value == "!":
        operand, rest = _parse_unary(tokens[1:])
        return Not(operand), rest
    if value == "(":
        inner, rest = _parse_or(tokens[1:])
        if not rest or rest[0][:2] != ("op", ")"):
            raise ValueError("missing ')'")
        return inner, rest[1:]
    raise ValueError(f"unexpected '{value}'")


def task_condition(task: Mapping[str, Any]) -> Condition | None:
    """A DAG task's condition: its `depends`, else its `dependencies` joined with && (ancestry.go
    getTaskDependsLogic); None when it has neither. ValueError for a `depends` that does not parse."""
    depends = task.get("depends")
    if isinstance(depends, str) and depends.strip():
        return parse_depends(depends)
    dependencies = task.get("dependencies")
    cond: Condition | None = None
    for name in dependencies if isinstance(dependencies, list) else []:
        ref = TaskRef(str(name), None)
        cond = ref if cond is None else BinOp("&&", cond, ref)
    return cond


def references(cond: Condition) -> Iterator[TaskRef]:
    if isinstance(cond, TaskRef):
        yield cond
    elif isinstance(cond, Not):
        yield from references(cond.operand)
    else:
        yield from references(cond.left)
        yield from references(cond.right)


def referenced_tasks(cond: Condition | None) -> set[str]:
    return {ref.task for ref in references(cond)} if cond is not None else set()


def dependency_problems(task: str, cond: Condition, tasks: Mapping[str, Mapping[str, Any]]) -> Iterator[str]:
    """What `argo lint` refuses in a task's references (workflow/validate/validate.go validateDAG)."""
    refs = list(references(cond))
    for missing in sorted({ref.task for ref in refs} - set(tasks)):
        yield f"task '{task}' depends on '{missing}', no such task"
    for ref in refs:
        loops = any(key in tasks.get(ref.task, {}) for key in LOOP_KEYS)
        if ref.result in ITEMS_RESULTS and ref.task in tasks and not loops:
            yield f"task '{task}' depends on '{ref.task}.{ref.result}', but '{ref.task}' has no items to loop over"


def task_results(phase: str, daemoned: bool = False, children: Iterable[str] | None = None) -> frozenset[str]:
    """The results a finished task offers to `depends`, as workflow/controller/dag.go evaluateDependsLogic
    computes them: one per phase (Error is `Errored`), `Daemoned` for a daemon that is not Pending, and
    `AnySucceeded`/`AllFailed` only for a task group (a task with items) from its children's phases."""
    results = {_PHASE_RESULTS[phase]} if phase in _PHASE_RESULTS else set()
    if daemoned and phase != "Pending":
        results.add("Daemoned")
    if children is not None:
        phases = list(children)
        if "Succeeded" in phases:
            results.add("AnySucceeded")
        if phases and all(p == "Failed" for p in phases):
            results.add("AllFailed")
    return frozenset(results)


def evaluate_depends(cond: Condition, results: Mapping[str, frozenset[str]]) -> bool:
    """Whether a task runs, given the results (`task_results`) of the tasks its condition names."""
    if isinstance(cond, TaskRef):
        return bool(results[cond.task] & (BARE_TASK if cond.result is None else {cond.result}))
    if isinstance(cond, Not):
        return not evaluate_depends(cond.operand, results)
    if cond.op == "&&":
        return evaluate_depends(cond.left, results) and evaluate_depends(cond.right, results)
    return evaluate_depends(cond.left, results) or evaluate_depends(cond.right, results)


# -- when ----------------------------------------------------------------------------------------


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
