"""The local engine: runs a compiled Workflow/WorkflowTemplate dict (the YAML `argo submit` sends).

It executes the subset this project emits — DAG tasks (`depends`/`dependencies`), container and
script templates, workflow/input/output parameters (`valueFrom.path`, `default`, `globalName`),
output artifacts, `when`, `retryStrategy`, `activeDeadlineSeconds`, `onExit`, template mutexes
and the `{{workflow.*}}` variables used — with Argo's semantics. Anything else is refused by
name before a node runs. Values reach the nodes byte for byte as Argo v4.1.2 passes them. Where a
node runs is the runtime's business (workflows/engine/runtime.py): a subprocess of this Python environment
(outputs mapped to a per-node directory under `runs/<workflow>/`), or the template's image under
podman/docker with the pod's security context and limits. Fields that only matter to a cluster
(GC, metrics, and on the process runtime pod security and resources) are ignored and listed in the
run record.

manifest.py reads a manifest and refuses what the engine does not execute; scheduler.py runs the
workflow and its DAG; nodes.py runs each container or script node; records.py is what a run
records; run_queue.py runs workflows one at a time for the webhook, the drop watcher and `up`.
The expressions (`depends`, `when`, `{{...}}`) are workflows/argo_expressions.py, shared with lint.
"""

from workflows.engine.manifest import UnsupportedConstruct, load_manifest, resolve_parameters, workflow_parameters
from workflows.engine.records import Node, Run
from workflows.engine.run_queue import RunQueue
from workflows.engine.scheduler import Engine

__all__ = [
    "Engine",
    "Node",
    "Run",
    "RunQueue",
    "UnsupportedConstruct",
    "load_manifest",
    "resolve_parameters",
    "workflow_parameters",
]
