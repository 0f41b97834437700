"""Drops the cluster's listener missed: a CronWorkflow looks at `incoming/` and submits each drop with no run yet.

MinIO's bucket-notification stream has no replay. A `drop.json` written while MinIO or the `minio`
EventSource restarts, or before the EventSource subscribed, reaches no Sensor and starts nothing.
Every `SCHEDULE`, the CronWorkflow `NAME` runs `fashion-pipeline reconcile-drops`: the local
watcher's scanner (workflows/triggers/drops.py: the same checks, refusals and write-once log) with a launcher
that creates the Workflow the Sensor would have created, `drop-<drop_id>` from the WorkflowTemplate
with the same arguments.

The Workflow's name is the dedup: a drop the Sensor (or an earlier pass) already started meets
AlreadyExists and is never run twice. Either way the drop is then written to the store's drop log,
so a drop whose Workflow is gone (the template's ttlStrategy deletes it after 7 days) is not started
again. The log is written only after the API accepted or refused the name: a create that fails (API
down, no permission) leaves the drop for the next pass and fails this one, which Argo shows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from steps.errors import UserError
from steps.storage import Store
from workflows import pipeline, templates, trigger
from workflows.spec import Step
from workflows.triggers import drop_sensor
from workflows.triggers.base import cron_workflow
from workflows.triggers.drops import DropScanner

log = logging.getLogger(__name__)

NAME = "fashion-drops-reconcile"
# MinIO redelivers nothing; 10 minutes bounds how late a missed drop starts.
SCHEDULE = "*/10 * * * *"
SERVICE_ACCOUNT = "fashion-pipeline-drop-reconciler"
VIA = f"cronworkflow/{NAME}"
# The service account's namespace, mounted into every pod that has a token.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WORKFLOWS = ("argoproj.io", "v1alpha1", "workflows")


def workflow_for(record: dict[str, Any], store_uri: str) -> dict[str, Any]:
    """The Workflow the Sensor creates for this drop (drop_sensor.drop_workflow), via this CronWorkflow."""
    workflow = drop_sensor.drop_workflow(store_uri)
    workflow["metadata"]["name"] = record["run"]
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    values.update(record["parameters"])
    values[trigger.ARGUMENT] = trigger.summary("drop", VIA, payload=record["manifest"], object=record["object"])
    workflow["spec"]["arguments"]["parameters"] = [{"name": name, "value": value} for name, value in values.items()]
    return workflow


def current_namespace() -> str:
    """The pod's own namespace on a cluster, else the pipeline's."""
    try:
        return NAMESPACE_FILE.read_text().strip() or pipeline.NAMESPACE
    except OSError:
        return pipeline.NAMESPACE


class DropReconciler(DropScanner):
    """One pass over `incoming/`: each valid drop with no run yet gets its Workflow, created through the API."""

    def __init__(self, store: Store, api_client: Any, namespace: str) -> None:
        super().__init__(store)
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    # Most drops a pass sees were started long ago: not worth a line each.
    announce_duplicates = False

    def _launch(self, record: dict[str, Any]) -> str:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        body = workflow_for(record, self.store.uri_of(""))
        group, version, plural = WORKFLOWS
        try:
            self.api.create_namespaced_custom_object(group, version, self.namespace, plural, body)
            status = "submitted"
            log.info(
                "drop %s: submitted Workflow %s/%s (no run had started)",
                record["drop_id"],
                self.namespace,
                record["run"],
            )
        except HTTPError as exc:  # the API server did not answer at all
            raise UserError(f"could not create Workflow {self.namespace}/{record['run']}: {exc}") from exc
        except ApiException as exc:
            if exc.status != 409:
                raise UserError(_create_error(record["run"], self.namespace, exc)) from exc
            status = "duplicate"
            log.info("drop %s: Workflow %s exists already (the Sensor started it)", record["drop_id"], record["run"])
        self.log.accept(record["drop_id"], {**record, "via": VIA})  # False: an `up` or another pass logged it
        return status


def _create_error(run: str, namespace: str, exc: Any) -> str:
    reason = " ".join(str(exc.reason or exc.body).split())
    if exc.status in (401, 403):
        return (
            f"not allowed to create Workflow {namespace}/{run} ({reason}): give the service account "
            f"{SERVICE_ACCOUNT} create on workflows.argoproj.io (argo/rbac.yaml)"
        )
    return f"could not create Workflow {namespace}/{run}: the API answered {exc.status} {reason}; the next pass retries"


# ---------------------------------------------------------------------------------------------
# The CronWorkflow
# ---------------------------------------------------------------------------------------------


# In the full image: its Kubernetes client alone (126 MB installed) would take the slim image past its
# budget (15% of the full one), and the nodes that train hold the full image anyway.
STEP = Step("reconcile-drops", "reconcile-drops", extra_args=("--namespace", "{{workflow.namespace}}"))
SIZING = templates.Sizing("250m", "512Mi", 600)


def manifest() -> dict[str, Any]:
    description = (
        f"At {SCHEDULE}: submits drop-<drop_id> from {pipeline.NAME} for each valid drop in the "
        "store's incoming/ that has no run yet (MinIO's notifications have no replay)."
    )
    template = templates.container(STEP, SIZING, retry_strategy=templates.NETWORK_RETRY)
    title = "Fashion-MNIST: data drops the Sensor missed"
    return cron_workflow(NAME, title, description, SCHEDULE, template, SERVICE_ACCOUNT, 900, 3600)
