"""The manifest linter: strict schemas for every kind we ship, plus the checks `argo lint` adds."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SCHEMAS

from workflows.validate import Problem, SchemasMissing, Validator, lint_paths

if not SCHEMAS.is_dir() and os.environ.get("CI"):
    raise RuntimeError(f"CI needs the pinned schemas at {SCHEMAS}: set FASHION_PIPELINE_SCHEMAS")
pytestmark = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"no schemas at {SCHEMAS}")

# Loaded once: the schemas are parsed lazily and cached by the validator.
VALIDATOR = Validator(SCHEMAS) if SCHEMAS.is_dir() else None

HELLO_WORLD = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  generateName: hello-world-
  labels:
    workflows.argoproj.io/archive-strategy: "false"
  annotations:
    workflows.argoproj.io/description: |
      This is a simple hello world example.
spec:
  entrypoint: hello-world
  templates:
  - name: hello-world
    container:
      image: busybox
      command: [echo]
      args: ["hello world"]
      resources:
        limits:
          memory: 32Mi
          cpu: 100m
"""

DIAMOND = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: dag-diamond
spec:
  entrypoint: diamond
  arguments:
    parameters:
    - name: message
      value: hello
  templates:
  - name: echo
    inputs:
      parameters:
      - name: message
    retryStrategy:
      limit: 2
    activeDeadlineSeconds: 300
    container:
      image: alpine:3.7
      command: [sh, -c]
      args: ["echo {{inputs.parameters.message}} | tee {{outputs.parameters.said.path}}"]
    outputs:
      parameters:
      - name: said
        valueFrom:
          path: /tmp/said
    metrics:
      prometheus:
      - name: echo_duration_seconds
        help: Duration of the echo step
        labels:
        - key: status
          value: "{{status}}"
        gauge:
          realtime: false
          value: "{{duration}}"
  - name: diamond
    dag:
      tasks:
      - name: A
        template: echo
        arguments:
          parameters: [{name: message, value: "{{workflow.parameters.message}}"}]
      - name: B
        depends: A
        template: echo
        arguments:
          parameters: [{name: message, value: "{{tasks.A.outputs.parameters.said}}"}]
      - name: C
        depends: A.Succeeded
        template: echo
        arguments:
          parameters: [{name: message, value: "{{=sprig.upper(tasks.A.outputs.parameters.said)}}"}]
      - name: D
        depends: B && C
        template: echo
        arguments:
          parameters:
          - name: message
            value: "{{tasks.B.outputs.parameters.said}} {{tasks.C.outputs.parameters.said}} {{workflow.name}}"
"""

CRON = """
apiVersion: argoproj.io/v1alpha1
kind: CronWorkflow
metadata:
  name: hello-world
spec:
  schedules: ["0 2 * * *"]
  timezone: America/Los_Angeles
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: 0
  workflowSpec:
    entrypoint: date
    templates:
    - name: date
      container:
        image: alpine:3.6
        command: [sh, -c]
        args: ["date; sleep 90"]
"""

EVENT_SOURCE = """
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: retrain-webhook
spec:
  service:
    ports:
    - port: 12000
      targetPort: 12000
  webhook:
    retrain:
      port: "12000"
      endpoint: /retrain
      method: POST
      authSecret:
        name: retrain-webhook-token
        key: token
      maxPayloadSize: 1048576
"""

SENSOR = """
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: retrain
spec:
  template:
    serviceAccountName: operate-workflow-sa
  dependencies:
  - name: retrain-request
    eventSourceName: retrain-webhook
    eventName: retrain
  triggers:
  - template:
      name: submit-retrain
      argoWorkflow:
        operation: submit
        source:
          resource:
            apiVersion: argoproj.io/v1alpha1
            kind: Workflow
            metadata:
              generateName: fashion-mnist-retrain-
            spec:
              workflowTemplateRef:
                name: fashion-mnist-train-deploy
              arguments:
                parameters:
                - name: epochs
                  value: "10"
        parameters:
        - src:
            dependencyName: retrain-request
            dataKey: body.epochs
            value: "10"
          dest: spec.arguments.parameters.0.value
    rateLimit:
      unit: Minute
      requestsPerUnit: 1
"""

INFERENCE_SERVICE = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: fashion-mnist
  annotations:
    serving.kserve.io/deploymentMode: Serverless
spec:
  predictor:
    serviceAccountName: kserve-s3
    canaryTrafficPercent: 10
    minReplicas: 1
    model:
      modelFormat:
        name: tensorflow
      runtimeVersion: "2.16.1"
      storageUri: s3://models/fashion-mnist/versions/v1
      resources:
        requests: {cpu: 100m, memory: 512Mi}
        limits: {cpu: "1", memory: 1Gi}
"""

CORE = """
apiVersion: v1
kind: ServiceAccount
metadata:
  name: pipeline
  namespace: fashion
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pipeline
  namespace: fashion
rules:
- apiGroups: [argoproj.io]
  resources: [workflowtaskresults]
  verbs: [create, patch]
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [get, list, watch, create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: pipeline
  namespace: fashion
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pipeline
subjects:
- kind: ServiceAccount
  name: pipeline
  namespace: fashion
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: artifact-repositories
  annotations:
    workflows.argoproj.io/default-artifact-repository: default-v1
data:
  default-v1: |
    s3:
      bucket: fashion
      endpoint: minio:9000
      insecure: true
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio, namespace: fashion}
spec:
  replicas: 1
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
      - name: minio
        image: minio/minio:RELEASE.2025-01-20T14-49-07Z
        args: [server, /data]
        ports: [{containerPort: 9000}]
"""

# gate -> rollout (only when promoting) -> report: rollout may be Skipped.
GATED = """
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: gated
spec:
  entrypoint: main
  templates:
  - name: step
    inputs:
      parameters:
      - name: value
        default: ""
    outputs:
      parameters:
      - name: out
        valueFrom:
          path: /tmp/out
    container:
      image: alpine
      command: [sh, -c, "echo {{inputs.parameters.value}} > /tmp/out"]
  - name: main
    dag:
      tasks:
      - name: gate
        template: step
      - name: rollout
        depends: gate
        when: "{{tasks.gate.outputs.parameters.out}} == promote"
        template: step
      - name: report
        depends: rollout
        template: step
        arguments:
          parameters: [{name: value, value: "{{tasks.rollout.outputs.parameters.out}}"}]
"""


def load(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def problems(doc: dict[str, Any]) -> list[Problem]:
    assert VALIDATOR is not None
    return VALIDATOR.validate(doc)


def messages(doc: dict[str, Any]) -> list[str]:
    return [f"{p.path}: {p.message}" for p in problems(doc)]


def only(doc: dict[str, Any], fragment: str) -> Problem:
    """The single problem whose text contains `fragment`."""
    found = [p for p in problems(doc) if fragment in str(p)]
    assert len(found) == 1, (fragment, [str(p) for p in problems(doc)])
    return found[0]


# -- upstream-shaped manifests pass ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        HELLO_WORLD,
        DIAMOND,
        CRON,
        EVENT_SOURCE,
        SENSOR,
        INFERENCE_SERVICE,
        DEPLOYMENT,
        GATED.replace("path: /tmp/out", "path: /tmp/out\n          default: hold"),
    ],
    ids=[
        "hello-world",
        "dag-diamond",
        "cron",
        "webhook-eventsource",
        "sensor",
        "inferenceservice",
        "deployment",
        "skip-with-default",
    ],
)
def test_valid_manifests_have_no_problems(text: str) -> None:
    assert messages(load(text)) == []


@pytest.mark.parametrize("doc", list(yaml.safe_load_all(CORE)), ids=lambda d: d["kind"])
def test_core_kinds_pass(doc: dict[str, Any]) -> None:
    assert messages(doc) == []


# -- schema strictness -------------------------------------------------------------------------


def test_typo_in_a_container_field_is_reported_where_it_is() -> None:
    doc = load(HELLO_WORLD)
    doc["spec"]["templates"][0]["container"]["imagee"] = doc["spec"]["templates"][0]["container"].pop("image")
    problem = only(doc, "imagee")
    assert problem.path == "$.spec.templates[0].container.imagee"
    assert "did you mean 'image'" in problem.message
    assert str(problem).startswith("<memory>: $.spec.templates[0].container.imagee: unknown field")


def test_typo_in_the_spec_is_reported_with_the_missing_entrypoint() -> None:
    doc = load(HELLO_WORLD)
    doc["spec"]["entrypont"] = doc["spec"].pop("entrypoint")
    found = messages(doc)
    assert "$.spec.entrypont: unknown field 'entrypont' (did you mean 'entrypoint'?)" in found
    assert any("entrypoint is required" in m for m in found)


def test_cron_workflow_with_the_old_singular_schedule_is_rejected() -> None:
    doc = load(CRON)
    doc["spec"]["schedule"] = doc["spec"].pop("schedules")[0]
    found = messages(doc)
    assert "$.spec.schedule: unknown field 'schedule' (did you mean 'schedules'?)" in found
    assert "$.spec: 'schedules' is a required property" in found


def test_labels_stay_maps_of_strings() -> None:
    doc = load(HELLO_WORLD)
    doc["metadata"]["labels"]["replicas"] = 3
    assert messages(doc) == ["$.metadata.labels.replicas: expected string, got integer"]


def test_typo_in_an_event_source_webhook() -> None:
    doc = load(EVENT_SOURCE)
    doc["spec"]["webhook"]["retrain"]["endpiont"] = doc["spec"]["webhook"]["retrain"].pop("endpoint")
    found = messages(doc)
    assert "$.spec.webhook.retrain.endpiont: unknown field 'endpiont' (did you mean 'endpoint'?)" in found
    assert "$.spec.webhook.retrain: 'endpoint' is a required property" in found


def test_typo_in_a_sensor_trigger() -> None:
    doc = load(SENSOR)
    argo = doc["spec"]["triggers"][0]["template"]["argoWorkflow"]
    argo["operaton"] = argo.pop("operation")
    problem = only(doc, "operaton")
    assert problem.path == "$.spec.triggers[0].template.argoWorkflow.operaton"


def test_workflow_inside_a_sensor_is_validated_as_a_workflow() -> None:
    doc = load(SENSOR)
    workflow = doc["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"]["resource"]
    workflow["spec"]["workflowTemplateRefs"] = workflow["spec"].pop("workflowTemplateRef")
    found = messages(doc)
    inside = "$.spec.triggers[0].template.argoWorkflow.source.resource.spec"
    assert (
        f"{inside}.workflowTemplateRefs: unknown field 'workflowTemplateRefs' (did you mean 'workflowTemplateRef'?)"
        in found
    )
    assert f"{inside}: spec.entrypoint is required (no workflowTemplateRef)" in found


def test_sensor_dest_must_point_at_an_existing_argument() -> None:
    doc = load(SENSOR)
    doc["spec"]["triggers"][0]["template"]["argoWorkflow"]["parameters"][0]["dest"] = (
        "spec.arguments.parameters.1.value"
    )
    problem = only(doc, "dest")
    assert problem.path == "$.spec.triggers[0].template.argoWorkflow.parameters[0].dest"
    assert "no '1'" in problem.message


def test_typo_in_an_inference_service() -> None:
    doc = load(INFERENCE_SERVICE)
    doc["spec"]["predictor"]["canaryTraficPercent"] = doc["spec"]["predictor"].pop("canaryTrafficPercent")
    problem = only(doc, "canaryTraficPercent")
    assert problem.path == "$.spec.predictor.canaryTraficPercent"
    assert "did you mean 'canaryTrafficPercent'" in problem.message


def test_inference_service_metadata_name_must_be_a_string() -> None:
    doc = load(INFERENCE_SERVICE)
    doc["metadata"]["name"] = 7
    assert messages(doc) == ["$.metadata.name: expected string, got integer"]


def test_typos_in_core_kinds() -> None:
    account = yaml.safe_load(CORE.split("---")[0])
    account["automountServiceAccountTokn"] = False
    assert only(account, "automountServiceAccountTokn").path == "$.automountServiceAccountTokn"
    deployment = load(DEPLOYMENT)
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    assert messages(deployment) == [
        "$.spec.replica: unknown field 'replica' (did you mean 'replicas'?)",
        "$.spec.template.spec.containers[0].imagee: unknown field 'imagee' (did you mean 'image'?)",
    ]


def test_unknown_kinds_are_problems_not_crashes() -> None:
    assert messages({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}) == [
        "$: unknown apiVersion/kind example.com/v1 Widget (Kubernetes 1.33)"
    ]
    assert messages({"apiVersion": "argoproj.io/v1alpha1", "kind": "Template"}) == [
        "$: unknown Argo kind argoproj.io/v1alpha1 Template"
    ]
    assert messages({"kind": "Workflow"}) == ["$: a manifest needs string fields apiVersion and kind"]


# -- semantic checks: names, references, DAG shape -----------------------------------------------


def test_bad_template_name() -> None:
    doc = load(HELLO_WORLD)
    doc["spec"]["templates"][0]["name"] = "Train_Model"
    doc["spec"]["entrypoint"] = "Train_Model"
    problem = only(doc, "Train_Model")
    assert problem.path == "$.spec.templates[0].name"
    assert "must match ^[a-zA-Z0-9][-a-zA-Z0-9]*$" in problem.message


def test_duplicate_task_names_and_missing_templates() -> None:
    doc = load(DIAMOND)
    tasks = doc["spec"]["templates"][1]["dag"]["tasks"]
    tasks[2]["name"] = "B"
    tasks[3]["template"] = "ecco"
    found = messages(doc)
    assert "$.spec.templates[1].dag.tasks[2].name: task name 'B' is used twice" in found
    assert "$.spec.templates[1].dag.tasks[3].template: task 'D' calls template 'ecco', which does not exist" in found


def test_entrypoint_and_on_exit_must_exist() -> None:
    doc = load(HELLO_WORLD)
    doc["spec"]["entrypoint"] = "hello"
    doc["spec"]["onExit"] = "report"
    assert messages(doc) == [
        "$.spec.entrypoint: entrypoint 'hello' is not a template of this workflow",
        "$.spec.onExit: onExit template 'report' is not a template of this workflow",
    ]


def test_metric_with_invalid_name_and_no_help() -> None:
    doc = load(DIAMOND)
    metric = doc["spec"]["templates"][0]["metrics"]["prometheus"][0]
    metric["name"] = "echo-duration"
    metric["help"] = ""
    found = messages(doc)
    at = "$.spec.templates[0].metrics.prometheus[0]"
    assert f"{at}.name: metric name 'echo-duration' must match ^[a-zA-Z_:][a-zA-Z0-9_:]*$" in found
    assert f"{at}.help: metric 'echo-duration' needs a non-empty help" in found
    del metric["help"]
    assert f"{at}: 'help' is a required property" in messages(doc)


def test_dangling_task_output_reference() -> None:
    doc = load(DIAMOND)
    doc["spec"]["templates"][1]["dag"]["tasks"][1]["arguments"]["parameters"][0]["value"] = (
        "{{tasks.x.outputs.parameters.y}}"
    )
    problem = only(doc, "tasks.x")
    assert problem.path == "$.spec.templates[1].dag.tasks[1].arguments.parameters[0].value"
    assert problem.message == "cannot resolve {{tasks.x.outputs.parameters.y}}: no task 'x' in this template"


def test_undeclared_output_parameter_of_an_ancestor() -> None:
    doc = load(DIAMOND)
    doc["spec"]["templates"][1]["dag"]["tasks"][1]["arguments"]["parameters"][0]["value"] = (
        "{{tasks.A.outputs.parameters.sad}}"
    )
    assert "declares no output parameter 'sad'" in only(doc, "sad").message


def test_reference_to_a_task_that_is_not_an_ancestor() -> None:
    doc = load(DIAMOND)
    # B and C run in parallel: B cannot read C's output.
    doc["spec"]["templates"][1]["dag"]["tasks"][1]["arguments"]["parameters"][0]["value"] = (
        "{{tasks.C.outputs.parameters.said}}"
    )
    problem = only(doc, "tasks.C")
    assert problem.message.endswith("task 'C' is not an ancestor of task 'B'")


def test_non_ancestor_reference_inside_an_expression_tag() -> None:
    doc = load(DIAMOND)
    doc["spec"]["templates"][1]["dag"]["tasks"][2]["arguments"]["parameters"][0]["value"] = (
        "{{=sprig.upper(tasks['B'].outputs.parameters.said)}}"
    )
    assert only(doc, "tasks.B").message.endswith("task 'B' is not an ancestor of task 'C'")


def test_unknown_workflow_parameter_input_and_item() -> None:
    doc = load(DIAMOND)
    container = doc["spec"]["templates"][0]["container"]
    container["args"] = ["{{workflow.parameters.mesage}} {{inputs.parameters.msg}} {{item}} {{pod.name}}"]
    found = messages(doc)
    at = "$.spec.templates[0].container.args[0]"
    assert found == [
        f"{at}: cannot resolve {{{{workflow.parameters.mesage}}}}: no workflow parameter 'mesage' in "
        "spec.arguments.parameters",
        f"{at}: cannot resolve {{{{inputs.parameters.msg}}}}: template 'echo' declares no inputs.parameters 'msg'",
        f"{at}: cannot resolve {{{{item}}}}: item is only defined in a task or step with "
        "withItems/withParam/withSequence",
    ]


def test_metric_only_variables_are_refused_elsewhere() -> None:
    doc = load(HELLO_WORLD)
    doc["spec"]["templates"][0]["container"]["args"] = ["{{status}}"]
    assert messages(doc) == ["$.spec.templates[0].container.args[0]: cannot resolve {{status}}: unknown variable"]


def test_dag_cycle_is_reported_with_its_path() -> None:
    doc = load(DIAMOND)
    tasks = doc["spec"]["templates"][1]["dag"]["tasks"]
    tasks[0]["depends"] = "D"
    cycles = [m for m in messages(doc) if "cycle" in m]
    assert cycles == [
        "$.spec.templates[1].dag.tasks[0]: dependency cycle: A -> B -> D -> A",
        "$.spec.templates[1].dag.tasks[0]: dependency cycle: A -> C -> D -> A",
    ]


def test_depends_on_an_unknown_task_or_result() -> None:
    doc = load(DIAMOND)
    tasks = doc["spec"]["templates"][1]["dag"]["tasks"]
    tasks[1]["depends"] = "A && Z.Failed"
    tasks[2]["depends"] = "A.Succeded"
    tasks[3]["depends"] = "(B || C"
    found = messages(doc)
    assert "$.spec.templates[1].dag.tasks[1].depends: task 'B' depends on 'Z', no such task" in found
    assert any(
        m.startswith("$.spec.templates[1].dag.tasks[2].depends: cannot parse depends") and ".Succeded" in m
        for m in found
    )
    assert "$.spec.templates[1].dag.tasks[3].depends: cannot parse depends '(B || C': missing ')'" in found


def test_dependencies_and_depends_cannot_be_mixed() -> None:
    doc = load(DIAMOND)
    tasks = doc["spec"]["templates"][1]["dag"]["tasks"]
    tasks[1]["dependencies"] = [tasks[1].pop("depends")]
    assert "$.spec.templates[1].dag: a DAG cannot use both 'depends' and 'dependencies'" in messages(doc)


def test_task_must_supply_inputs_without_default() -> None:
    doc = load(DIAMOND)
    del doc["spec"]["templates"][1]["dag"]["tasks"][2]["arguments"]
    assert messages(doc) == [
        "$.spec.templates[1].dag.tasks[2]: task 'C' does not supply input parameter 'message' of its template"
    ]


# -- outputs of a task that may be Skipped ---------------------------------------------------------


def test_reading_output_of_a_skippable_task_needs_a_default() -> None:
    problem = only(load(GATED), "rollout")
    assert problem.path == "$.spec.templates[1].dag.tasks[2].arguments.parameters[0].value"
    assert "reads output 'out' of 'rollout', which has a when" in problem.message
    assert "valueFrom.default in template 'step'" in problem.message


def test_reading_output_of_a_task_omitted_behind_a_when_needs_a_default() -> None:
    doc = load(GATED)
    tasks = doc["spec"]["templates"][1]["dag"]["tasks"]
    # rollout -> verify (only if rollout succeeded) -> report (in any case) reads verify.
    tasks.insert(2, {"name": "verify", "depends": "rollout.Succeeded", "template": "step"})
    tasks[3]["depends"] = "verify || verify.Omitted"
    tasks[3]["arguments"]["parameters"][0]["value"] = "{{tasks.verify.outputs.parameters.out}}"
    problem = only(doc, "verify")
    assert "reads output 'out' of 'verify', which is Omitted when 'rollout' is Skipped" in problem.message


def test_reader_that_only_runs_after_success_needs_no_default() -> None:
    doc = load(GATED)
    doc["spec"]["templates"][1]["dag"]["tasks"][2]["depends"] = "rollout.Succeeded"
    assert messages(doc) == []


def test_step_reading_output_of_a_conditional_step() -> None:
    doc = load(GATED)
    doc["spec"]["templates"][1] = {
        "name": "main",
        "steps": [
            [{"name": "gate", "template": "step"}],
            [{"name": "rollout", "template": "step", "when": "{{steps.gate.outputs.parameters.out}} == promote"}],
            [
                {
                    "name": "report",
                    "template": "step",
                    "arguments": {
                        "parameters": [{"name": "value", "value": "{{steps.rollout.outputs.parameters.out}}"}]
                    },
                }
            ],
        ],
    }
    assert messages(doc) == [
        "$.spec.templates[1].steps[2][0].arguments.parameters[0].value: reads output 'out' of 'rollout', which has "
        "a when; declare outputs.parameters[out].valueFrom.default in template 'step'"
    ]


def test_steps_cannot_read_a_step_of_the_same_group() -> None:
    doc = load(GATED)
    doc["spec"]["templates"][1] = {
        "name": "main",
        "steps": [
            [
                {"name": "a", "template": "step"},
                {
                    "name": "b",
                    "template": "step",
                    "arguments": {"parameters": [{"name": "value", "value": "{{steps.a.outputs.parameters.out}}"}]},
                },
            ]
        ],
    }
    assert only(doc, "steps.a").message.endswith("step 'a' is not in an earlier group than step 'b'")


# -- files -----------------------------------------------------------------------------------------


def test_lint_paths_walks_directories_and_numbers_documents(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "core.yaml").write_text(CORE)
    broken = copy.deepcopy(load(HELLO_WORLD))
    broken["spec"]["templates"][0]["container"]["imagee"] = "busybox"
    (tmp_path / "a.yml").write_text(yaml.safe_dump_all([load(CRON), broken]))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    found = [str(p) for p in lint_paths([tmp_path], SCHEMAS)]
    assert found == [
        f"{tmp_path / 'a.yml'}: doc[1]:$.spec.templates[0].container.imagee: "
        "unknown field 'imagee' (did you mean 'image'?)"
    ]


def test_lint_paths_reports_yaml_syntax_errors_with_the_file_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n")
    (found,) = lint_paths([bad], SCHEMAS)
    assert found.file == str(bad)
    assert found.message.startswith("YAML syntax error at line 5")


def test_missing_schemas_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(SchemasMissing) as raised:
        Validator(tmp_path / "nowhere")
    text = str(raised.value)
    assert "\n" not in text, "the CLI prints a UserError as one line"
    assert f"{tmp_path / 'nowhere'} is not a directory" in text
    assert "curl -fsSL -o" in text
    for url in (
        "https://raw.githubusercontent.com/argoproj/argo-workflows/v4.1.2/api/jsonschema/schema.json",
        "https://raw.githubusercontent.com/argoproj/argo-events/v1.9.11/api/jsonschema/schema.json",
        "https://raw.githubusercontent.com/kserve/kserve/v0.20.0/config/crd/full/serving.kserve.io_inferenceservices.yaml",
    ):
        assert url in text
    for name in ("argo-workflows.schema.json", "argo-events.schema.json", "kserve-inferenceservice.crd.yaml"):
        assert str(tmp_path / "nowhere" / name) in text


def test_a_missing_schema_file_is_reported_when_first_needed(tmp_path: Path) -> None:
    validator = Validator(tmp_path)
    assert validator.validate(yaml.safe_load(CORE.split("---")[0])) == []
    with pytest.raises(SchemasMissing, match=r"kserve-inferenceservice\.crd\.yaml is missing"):
        validator.validate(load(INFERENCE_SERVICE))


def test_core_kinds_without_kubernetes_validate_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from workflows.validate import schemas

    # Validators are cached per kind, and other tests (linting argo/) load this one: start empty.
    monkeypatch.setattr(schemas, "_CORE_VALIDATORS", {})
    monkeypatch.setitem(sys.modules, "kubernetes_validate", None)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}, "spec": {}}
    assert messages(claim) == ["$: cannot check PersistentVolumeClaim: pip install kubernetes-validate"]


def test_a_step_writes_exactly_its_declared_outputs_and_may_leave_out_those_with_a_default() -> None:
    from workflows.spec import check_values

    check_values("rollout", {"outcome": "promoted", "served_version": "v1"})
    check_values("rollout", {})  # Skipped or failed before writing: Argo takes the defaults
    with pytest.raises(ValueError, match=r"does not declare \(\['champion_accurcy'\]\).*leaves out"):
        check_values(
            "evaluate",
            {"metrics_uri": "", "accuracy": "", "champion_version": "", "p_value": "", "champion_accurcy": ""},
        )
    with pytest.raises(ValueError, match=r"leaves out declared ones \(\['source'\]\)"):
        check_values("fetch", {"dataset_uri": "", "dataset_digest": "", "cache_hit": "", "canonical": ""})
