"""DAG analysis for lint: each task's dependencies (Argo's `depends` grammar), cycles, ancestors,
and which tasks end Skipped or Omitted when a `when` is false."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workflows.argo_expressions import (
    LOOP_KEYS,
    Condition,
    dependency_problems,
    evaluate_depends,
    referenced_tasks,
    task_condition,
    task_results,
)
from workflows.validate.documents import Issue, Loc, named


@dataclass
class Dag:
    at: Loc
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    locs: dict[str, Loc] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    parents: dict[str, set[str]] = field(default_factory=dict)
    order: list[str] | None = None
    issues: list[Issue] = field(default_factory=list)

    @classmethod
    def of(cls, dag: dict[str, Any], at: Loc) -> Dag:
        self = cls(at)
        for i, task in named(dag.get("tasks")):
            name = task.get("name")
            if isinstance(name, str) and name not in self.tasks:
                self.tasks[name], self.locs[name] = task, (*at, "tasks", i)
        self._read_dependencies()
        self._sort()
        return self

    def _read_dependencies(self) -> None:
        styles: set[str] = set()
        for name, task in self.tasks.items():
            dependencies, depends = task.get("dependencies"), task.get("depends")
            if isinstance(dependencies, list) and dependencies:
                styles.add("dependencies")
            if isinstance(depends, str) and depends.strip():
                styles.add("depends")
            try:
                cond = task_condition(task)
            except ValueError as e:
                self.issues.append((self.locs[name] + ("depends",), f"cannot parse depends {depends!r}: {e}"))
                cond = None
            self.parents[name] = referenced_tasks(cond) & set(self.tasks)
            if cond is None:
                continue
            self.conditions[name] = cond
            at = (*self.locs[name], "depends" if "depends" in task else "dependencies")
            self.issues += [(at, problem) for problem in dependency_problems(name, cond, self.tasks)]
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
            elif cond is not None and not evaluate_depends(cond, self._results(cond, phases)):
                phases[name] = "Omitted"
            else:
                phases[name] = "Succeeded"
        return phases

    def _results(self, cond: Condition, phases: dict[str, str]) -> dict[str, frozenset[str]]:
        """What the tasks `cond` names offer to it; unknown tasks (reported) count as Succeeded, and a
        task with items as a group of children that all ended like it."""
        results = {}
        for task in referenced_tasks(cond):
            phase = phases.get(task, "Succeeded")
            loops = any(key in self.tasks.get(task, {}) for key in LOOP_KEYS)
            results[task] = task_results(phase, children=[phase] if loops else None)
        return results
