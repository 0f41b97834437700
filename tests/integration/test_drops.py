"""Data drops: the contract, the local watcher end to end (file store and a real S3 server), the Sensor's twin.

A complete drop starts exactly one run, `drop-<drop_id>`, that trains on the dropped data; a drop
without drop.json, with a corrupt file or an invalid drop.json, and a repeated notification start
nothing and are reported. The Sensor (workflows/triggers/drop_sensor.py) submits the same arguments for the
same drop, and its Lua filter accepts exactly the drops the watcher accepts.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLI, FILE_NAMES, REPO, SCHEMAS, S3Server, write_drop
from lua_harness import LUA, lua_value, run_lua

from steps.dataset import check_drop
from steps.registry import Registry
from steps.storage import Store, open_store
from workflows import pipeline, templates, trigger
from workflows.arguments import ARGUMENTS, DEFAULT_S3_ENDPOINT, DEFAULT_STORE
from workflows.engine import RunQueue, workflow_parameters
from workflows.pipeline import manifest
from workflows.render import rendered
from workflows.triggers import drop_reconcile, drop_sensor
from workflows.triggers.drops import (
    DropLog,
    DropWatcher,
    Outcome,
    load_drop_schema,
    metadata_value,
    parse_manifest,
    validate_manifest,
)
from workflows.triggers.payload import load_payload_schema, operator_arguments
from workflows.validate import lint_paths

TEMPLATE_DEFAULTS = {argument.name: argument.argo_default for argument in ARGUMENTS}
# A 200-image synthetic drop trains in seconds; the operator lowers the floors for it (`up -p`).
QUICK = ["-p", "epochs=1", "-p", "batch_size=64", "-p", "architecture=small-cnn", "-p", "precision=float32"]
OPERATOR = {"min_accuracy": "0", "min_class_recall": "0"}
CREATED = "2026-11-27T10:00:00Z"


# -- the contract ---------------------------------------------------------------------------------


def test_a_drop_may_set_what_a_webhook_event_may_set_with_the_same_constraints() -> None:
    drop, payload = load_drop_schema(), load_payload_schema()

    assert set(drop["properties"]) == set(payload["properties"]) - {"event_id", "data_url"} | {"drop_id", "created"}
    for name, spec in payload["properties"].items():
        if name not in ("event_id", "data_url", "reason"):
            assert drop["properties"][name] == spec, name
    assert drop["properties"]["drop_id"]["pattern"] == payload["properties"]["event_id"]["pattern"]
    assert drop["additionalProperties"] is False and drop["required"] == ["drop_id", "created"]


INVALID_MANIFESTS = [
    ({"created": CREATED}, "drop_id"),
    ({"drop_id": "d1"}, "created"),
    ({"drop_id": "D_1", "created": CREATED}, "drop_id"),
    ({"drop_id": "d1", "created": "yesterday"}, "created"),
    ({"drop_id": "d1", "created": CREATED + "\n"}, "created"),
    ({"drop_id": "d1", "created": CREATED, "epochs": -1}, "epochs"),
    ({"drop_id": "d1", "created": CREATED, "epochs": "3"}, "epochs"),
    ({"drop_id": "d1", "created": CREATED, "epochs": None}, "epochs"),
    ({"drop_id": "d1", "created": CREATED, "architecture": "resnet"}, "architecture"),
    ({"drop_id": "d1", "created": CREATED, "epoch": 3}, "epoch"),
    ({"drop_id": "d1", "created": CREATED, "data_url": "s3://elsewhere/x"}, "data_url"),
    ({"drop_id": "d1", "created": CREATED, "min_accuracy": 0}, "min_accuracy"),
    ({"drop_id": "d1", "created": CREATED, "reason": "r" * 201}, "reason"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_MANIFESTS, ids=[f for _, f in INVALID_MANIFESTS])
def test_an_invalid_manifest_is_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    problems = validate_manifest(body, folder="d1")

    assert any(problem.startswith(f"{field}:") for problem in problems), problems


def test_what_a_drop_may_not_decide_is_refused_saying_why() -> None:
    [policy] = validate_manifest({"drop_id": "d1", "created": CREATED, "min_accuracy": 0})
    [data_url] = validate_manifest({"drop_id": "d1", "created": CREATED, "data_url": "s3://b/x"})
    [folder] = validate_manifest({"drop_id": "d2", "created": CREATED}, folder="d1")

    assert "set by the operator" in policy and "min_accuracy" in operator_arguments()
    assert "its own folder" in data_url
    assert folder == "drop_id: 'd2' is not the name of its folder incoming/d1/"


@pytest.mark.parametrize("text", [b'{"drop_id": "a", "drop_id": "b"}', b'{"x": NaN}', b'{"x": "\\ud800"}', b"{"])
def test_manifests_the_cluster_would_read_differently_are_not_json(text: bytes) -> None:
    with pytest.raises(Exception, match="not valid JSON"):
        parse_manifest(text)


# -- the local watcher, end to end ------------------------------------------------------------------


class Platform:
    """The run queue of `up` with its drop watcher, on one store (run records under root/runs)."""

    def __init__(self, root: Path, store_uri: str, s3_endpoint: str = "") -> None:
        self.root = root
        self.store = open_store(store_uri)
        defaults = {
            **workflow_parameters(manifest()),
            "store": self.store.uri,
            "rollout_target": "local",
            "s3_endpoint": s3_endpoint,
        }
        self.runs = RunQueue(manifest, root / "runs", defaults, OPERATOR, "fashion-pipeline up")
        self.watcher = DropWatcher(self.store, self.runs, poll_s=0.2)

    def run_names(self) -> list[str]:
        runs = self.root / "runs"
        return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) if runs.exists() else []

    def wait_finished(self, name: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.runs.status(name)
            if status is not None and status["phase"] not in ("Pending", "Running"):
                return status
            time.sleep(0.5)
        raise AssertionError(f"{name} did not finish")

    def idle(self, timeout: float = 60) -> bool:
        """Nothing queued or running (the queue lets go of a finished run just after recording it)."""
        deadline = time.monotonic() + timeout
        while self.runs.busy() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.runs.busy()

    def stop(self) -> None:
        self.watcher.stop()
        self.runs.close()


def deliver(directory: Path, store_uri: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`fashion-pipeline drop` as a user runs it."""
    return subprocess.run(
        [CLI, "--store", store_uri, "drop", str(directory), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fetched_digest(status: dict[str, Any]) -> str:
    [fetch] = [node for node in status["nodes"] if node["template"] == "fetch-dataset"]
    return str(fetch["outputs"]["parameters"]["dataset_digest"])


def _drop_trains_once(
    platform: Platform, drop: Path, env: dict[str, str], drop_id: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's status, and the drop.json's user metadata as delivered (before the re-upload this checks)."""
    delivered = deliver(drop, platform.store.uri, env, "--id", drop_id, "--reason", "labelled in store 7", *QUICK)
    assert delivered.returncode == 0, delivered.stderr
    assert delivered.stdout.strip() == f"drop-{drop_id}"

    platform.watcher.start()
    status = platform.wait_finished(f"drop-{drop_id}")

    assert status["phase"] == "Succeeded", json.dumps(status)[-3000:]
    digest, _ = check_drop(str(drop))
    assert _fetched_digest(status) == digest  # it trained on the dropped data, not the canonical set
    assert status["parameters"]["data_url"] == platform.store.uri_of(f"incoming/{drop_id}")
    assert status["parameters"]["epochs"] == "1" and status["parameters"]["reason"] == "labelled in store 7"
    started = json.loads(status["parameters"]["trigger"])
    assert started["by"] == "drop" and started["payload"]["drop_id"] == drop_id
    # notified again, and drop.json re-uploaded: still one run
    assert platform.watcher.notify(f"incoming/{drop_id}/drop.json").status == "duplicate"
    key = f"incoming/{drop_id}/drop.json"
    delivered_metadata = platform.store.user_metadata(key)
    platform.store.replace_bytes(key, platform.store.read_bytes(key) + b"\n")
    time.sleep(1)
    assert platform.idle() and platform.run_names() == [f"drop-{drop_id}"]
    return status, delivered_metadata


def _lineage_is_on_the_model_card(platform: Platform, status: dict[str, Any], drop_id: str) -> None:
    registry = Registry(platform.store)
    version = status["outputs"]["parameters"]["model_version"]
    gate_dir = platform.root / "runs" / status["name"]
    [card] = list(gate_dir.rglob("model-card.md"))
    text = card.read_text()
    assert f"data drop {drop_id} (created " in text and "labelled in store 7" in text
    assert "train: 200 images (T-shirt/top 20," in text and "pixel mean" in text
    [summary] = list(gate_dir.rglob("summary.md"))
    assert f"data drop {drop_id}" in summary.read_text()
    assert registry.card(version)["dataset"]["digest"] == _fetched_digest(status)


@pytest.fixture
def file_platform(tmp_path: Path) -> Iterator[Platform]:
    platform = Platform(tmp_path, str(tmp_path / "store"))
    try:
        yield platform
    finally:
        platform.stop()


def test_a_complete_drop_in_a_file_store_starts_exactly_one_run_on_its_data(
    file_platform: Platform, tmp_path: Path
) -> None:
    drop = write_drop(tmp_path / "new-data", seed=3)
    status, _ = _drop_trains_once(file_platform, drop, {}, "2026-11-27")

    _lineage_is_on_the_model_card(file_platform, status, "2026-11-27")
    [record] = DropLog(file_platform.store).runs()
    assert record["run"] == "drop-2026-11-27" and record["object"] == "incoming/2026-11-27/drop.json"


def test_a_complete_drop_in_an_s3_store_starts_one_run_with_the_arguments_the_sensor_submits(
    tmp_path: Path, bucket: str, s3_env: S3Server
) -> None:
    platform = Platform(tmp_path, f"s3://{bucket}", s3_env.endpoint)
    try:
        drop = write_drop(tmp_path / "new-data", seed=4)
        status, metadata = _drop_trains_once(platform, drop, s3_env.env(), "s3-drop")
    finally:
        platform.stop()

    # The MinIO notification of that very object, as the EventSource passes it to the Sensor.
    key = "incoming/s3-drop/drop.json"
    record = minio_record(bucket, key, metadata["fashion-drop"])
    workflow = drop_sensor.drop_sensor_workflow(record, drop_sensor.sensor(f"s3://{bucket}"))
    arguments = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}

    assert workflow["metadata"]["name"] == status["name"] == "drop-s3-drop"
    assert {name: status["parameters"][name] for name in arguments if name != "trigger"} == {
        name: value for name, value in arguments.items() if name != "trigger"
    }
    cluster, local = json.loads(arguments["trigger"]), json.loads(status["parameters"]["trigger"])
    assert cluster == {"by": "drop", "via": "sensor/fashion-drops", "object": key, "payload": local["payload"]}
    assert local["object"] == key
    assert lua_accepts([record], f"s3://{bucket}") == [True]


def test_incomplete_corrupt_and_invalid_drops_start_nothing_and_are_reported(
    file_platform: Platform, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = file_platform.store
    caplog.set_level("INFO")

    def put_drop(drop_id: str, manifest: dict[str, Any] | bytes | None, corrupt: str | None = None) -> None:
        source = write_drop(tmp_path / drop_id, n_train=50, n_test=20)
        if corrupt:
            (source / corrupt).write_bytes(gzip.compress(b"\x00\x00\x08\x03 not an IDX file"))
        store.upload_dir(source, f"incoming/{drop_id}")
        if manifest is not None:
            body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            store.write_bytes(f"incoming/{drop_id}/drop.json", body)

    put_drop("no-manifest", None)
    put_drop("corrupt", {"drop_id": "corrupt", "created": CREATED}, corrupt=FILE_NAMES["train-labels"])
    put_drop("invalid", {"drop_id": "invalid", "created": CREATED, "epochs": -1, "min_accuracy": 0})
    put_drop("not-json", b'{"drop_id": "not-json",')
    put_drop("elsewhere", {"drop_id": "other-folder", "created": CREATED})

    outcomes = {o.drop_id: o for o in file_platform.watcher.scan()}

    assert {k: o.status for k, o in outcomes.items()} == {
        "no-manifest": "waiting",
        "corrupt": "refused",
        "invalid": "refused",
        "not-json": "refused",
        "elsewhere": "refused",
    }
    assert "train-labels-idx1-ubyte.gz" in outcomes["corrupt"].problems[0]
    assert any(p.startswith("epochs:") for p in outcomes["invalid"].problems)
    assert any(p.startswith("min_accuracy: refused") for p in outcomes["invalid"].problems)
    assert "not valid JSON" in outcomes["not-json"].problems[0]
    assert "not the name of its folder" in outcomes["elsewhere"].problems[0]
    # each is on record with why, once; a second look and a repeated notification report nothing new
    for drop_id in ("corrupt", "invalid", "not-json", "elsewhere"):
        [refusal] = DropLog(store).refusals(drop_id)
        assert refusal["problems"] == outcomes[drop_id].problems
    assert file_platform.watcher.scan() == []
    assert file_platform.watcher.notify("incoming/invalid/drop.json") == Outcome(
        "invalid", "refused", problems=outcomes["invalid"].problems
    )
    assert len(DropLog(store).refusals("invalid")) == 1
    assert "drop no-manifest: incoming/no-manifest/ has no drop.json yet" in caplog.text
    assert "drop invalid refused, nothing started: " in caplog.text
    time.sleep(0.5)
    assert file_platform.run_names() == [] and file_platform.idle(timeout=0) and DropLog(store).runs() == []


def test_a_corrected_drop_json_is_a_new_event(file_platform: Platform, tmp_path: Path) -> None:
    store = file_platform.store
    store.upload_dir(write_drop(tmp_path / "d", n_train=50, n_test=20), "incoming/fixed")
    store.write_bytes("incoming/fixed/drop.json", json.dumps({"drop_id": "fixed", "created": "now"}).encode())
    [refused] = file_platform.watcher.scan()
    file_platform.runs.close()  # accept, and run nothing: this is about what starts a run

    store.replace_bytes("incoming/fixed/drop.json", json.dumps({"drop_id": "fixed", "created": CREATED}).encode())
    [accepted] = file_platform.watcher.scan()

    assert refused.status == "refused" and accepted == Outcome("fixed", "queued", "drop-fixed")
    assert [r["run"] for r in DropLog(store).runs()] == ["drop-fixed"]


def test_drop_command_checks_before_it_uploads_and_never_overwrites(tmp_path: Path) -> None:
    store_uri = str(tmp_path / "store")
    good = write_drop(tmp_path / "good", n_train=30, n_test=10)
    bad = write_drop(tmp_path / "bad", n_train=30, n_test=10)
    (bad / FILE_NAMES["test-images"]).write_bytes(b"truncated")

    refused = deliver(bad, store_uri, {}, "--id", "bad")
    misnamed = deliver(good, store_uri, {}, "--id", "Not_An_Id")
    policy = deliver(good, store_uri, {}, "--id", "x", "-p", "min_accuracy=0")
    first = deliver(good, store_uri, {}, "--id", "once")
    again = deliver(good, store_uri, {}, "--id", "once")

    for result in (refused, misnamed, policy, again):
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "t10k-images-idx3-ubyte.gz" in refused.stderr and not (tmp_path / "store" / "incoming" / "bad").exists()
    assert "drop_id" in misnamed.stderr and "--id" in misnamed.stderr
    assert "min_accuracy: refused" in policy.stderr
    assert first.returncode == 0 and first.stdout.strip() == "drop-once"
    assert "already delivered" in again.stderr
    store = open_store(store_uri)
    written = parse_manifest(store.read_bytes("incoming/once/drop.json"))
    assert written["drop_id"] == "once" and validate_manifest(written, "once") == []
    assert sorted(k.rpartition("/")[2] for k in store.list("incoming/once")) == sorted(
        [*FILE_NAMES.values(), "drop.json"]
    )


def test_drop_json_carries_its_content_as_metadata_for_the_cluster(
    tmp_path: Path, bucket: str, s3_env: S3Server
) -> None:
    result = deliver(write_drop(tmp_path / "d", n_train=30, n_test=10), f"s3://{bucket}", s3_env.env(), "--id", "m1")
    store: Store = open_store(f"s3://{bucket}")

    assert result.returncode == 0, result.stderr
    body = parse_manifest(store.read_bytes("incoming/m1/drop.json"))
    assert store.user_metadata("incoming/m1/drop.json") == {"fashion-drop": metadata_value(body)}


# -- the cluster side: the Sensor and its Lua filter -------------------------------------------------


def minio_record(
    bucket: str, key: str, manifest_text: str | None, event: str = "s3:ObjectCreated:Put"
) -> dict[str, Any]:
    """One MinIO event record (the notification's Records entry), user metadata named as MinIO names it."""
    metadata = {"content-type": "application/json"}
    if manifest_text is not None:
        metadata[drop_sensor.metadata_header()] = manifest_text
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventTime": "2026-11-27T10:00:05.123Z",
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": 120, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "userMetadata": metadata},
        },
    }


def lua_accepts(records: list[dict[str, Any]], store_uri: str = DEFAULT_STORE) -> list[bool]:
    script = drop_sensor.lua_filter(store_uri=store_uri)
    cases = ",\n".join(lua_value({"notification": [record], "metadata": None}) for record in records)
    program = (
        f"local function filter()\n{script}end\n"
        f"local cases = {{\n{cases}\n}}\n"
        "for i = 1, #cases do event = cases[i]; print(tostring(filter() == true)) end\n"
    )
    return run_lua(program)


def _python_accepts(record: dict[str, Any], bucket: str = "fashion-pipeline") -> bool:
    """What the watcher accepts for the same object (its data aside): the manifest, its folder, the event."""
    obj = record["s3"]["object"]
    text = obj["userMetadata"].get(drop_sensor.metadata_header())
    parts = obj["key"].split("/")
    if (
        text is None
        or not record["eventName"].startswith("s3:ObjectCreated:")
        or record["s3"]["bucket"]["name"] != bucket
    ):
        return False
    if len(parts) != 3 or parts[0] != "incoming" or parts[2] != "drop.json":
        return False
    try:
        manifest_ = parse_manifest(text.encode())
    except Exception:
        return False
    return validate_manifest(manifest_, parts[1]) == []


MANIFEST_TEXTS = [
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00.123456+01:00","reason":"new \\u00e9\\ud83d\\ude00 data",'
    '"epochs":3,"learning_rate":1e-3,"seed":7,"architecture":"fast-cnn","train_limit":0,"precision":"float32"}',
    ' { "drop_id" : "d1" , "created" : "2026-11-27T10:00:00-05:00" , "epochs" : 8.0 } ',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","reason":"' + "\\u00e9" * 200 + '"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","reason":"' + "\\u00e9" * 201 + '"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","reason":"tab\\tquote\\"slash\\/"}',
    '{"drop_id":"d1","created":"2026-11-27"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z\\n"}',
    '{"drop_id":"d1"}',
    '{"drop_id":"d2","created":"2026-11-27T10:00:00Z"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":-1}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":2.5}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":"3"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":null}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":[3]}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","min_accuracy":0}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","data_url":"s3://x/y"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epoch":3}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":3,"epochs":4}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","reason":"\\ud800"}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","epochs":01}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z"} trailing',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z",}',
    '{"drop_id":"d1","created":"2026-11-27T10:00:00Z","learning_rate":1.}',
    '["drop_id"]',
    "not json",
]
KEY = "incoming/d1/drop.json"


@pytest.mark.skipif(LUA is None and not os.environ.get("CI"), reason="lua5.1 is not installed")
def test_the_sensor_filter_accepts_exactly_the_drops_the_watcher_accepts() -> None:
    records = [minio_record("fashion-pipeline", KEY, text) for text in MANIFEST_TEXTS]
    records += [
        minio_record("fashion-pipeline", KEY, None),  # uploaded without the metadata: the Sensor cannot read it
        minio_record("fashion-pipeline", "incoming/d1/drop.json.bak", MANIFEST_TEXTS[0]),
        minio_record("fashion-pipeline", "incoming/x/d1/drop.json", MANIFEST_TEXTS[0]),
        minio_record("other-bucket", KEY, MANIFEST_TEXTS[0]),
        minio_record("fashion-pipeline", KEY, MANIFEST_TEXTS[0], event="s3:ObjectRemoved:Delete"),
    ]
    expected = [_python_accepts(record) for record in records]

    assert expected[:4] == [True, True, True, True] and expected.count(True) == 5  # the cases mean something
    assert lua_accepts(records) == expected


def test_the_sensor_names_the_run_by_the_drop_and_fills_in_its_defaults() -> None:
    record = minio_record("fashion-pipeline", KEY, MANIFEST_TEXTS[0])
    workflow = drop_sensor.drop_sensor_workflow(record)
    arguments = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}

    assert workflow["metadata"]["name"] == "drop-d1"
    assert workflow["spec"]["workflowTemplateRef"] == {"name": pipeline.NAME}
    assert arguments["data_url"] == "s3://fashion-pipeline/incoming/d1" and arguments["reason"] == "new data drop"
    assert {k: v for k, v in arguments.items() if k not in ("data_url", "reason", "trigger")} == {
        k: TEMPLATE_DEFAULTS[k] for k in arguments if k not in ("data_url", "reason", "trigger")
    }
    assert json.loads(arguments["trigger"]) == json.loads(
        trigger.summary("drop", "sensor/fashion-drops", payload=json.loads(MANIFEST_TEXTS[0]), object=KEY)
    )
    # numbers as the steps parse them (gjson), whatever their JSON spelling
    spelled = drop_sensor.drop_sensor_workflow(minio_record("fashion-pipeline", KEY, MANIFEST_TEXTS[2]))
    assert {p["name"]: p["value"] for p in spelled["spec"]["arguments"]["parameters"]}["epochs"] == "8"
    # dest indexes by position: the arguments keep the template's order, policy left to the template
    order = [argument.name for argument in ARGUMENTS]
    assert list(arguments) == sorted(arguments, key=order.index)
    assert not set(arguments) & (set(operator_arguments()) - {"trigger"})


def test_the_event_source_listens_for_drop_manifests_in_the_store_bucket_with_its_credentials() -> None:
    source = drop_sensor.event_source()["spec"]["minio"]["drop"]
    store = DEFAULT_STORE.removeprefix("s3://")

    assert source["bucket"] == {"name": store}
    assert source["filter"] == {"prefix": "incoming/", "suffix": "drop.json"}
    assert source["events"] == ["s3:ObjectCreated:*"]
    assert source["endpoint"] == DEFAULT_S3_ENDPOINT.removeprefix("http://") and source["insecure"] is True
    assert source["accessKey"] == {"name": "fashion-pipeline-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert source["secretKey"] == {"name": "fashion-pipeline-s3", "key": "AWS_SECRET_ACCESS_KEY"}


def test_the_drop_sensor_and_event_source_run_under_their_own_least_privilege_accounts() -> None:
    documents = [doc for doc in yaml.safe_load_all((REPO / "argo" / "rbac.yaml").read_text()) if doc]
    find = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    sensor_account = drop_sensor.sensor()["spec"]["template"]["serviceAccountName"]
    source_account = drop_sensor.event_source()["spec"]["template"]["serviceAccountName"]
    [binding] = [d for d in documents if d["kind"] == "RoleBinding" and d["subjects"][0]["name"] == sensor_account]
    rules = find[("Role", binding["roleRef"]["name"])]["rules"]

    assert sensor_account != "fashion-pipeline-sensor" and source_account != "fashion-pipeline-eventsource"
    assert {(r["apiGroups"][0], res): set(r["verbs"]) for r in rules for res in r["resources"]} == {
        ("argoproj.io", "workflows"): {"create", "list"},
        ("argoproj.io", "workflowtemplates"): {"get"},
    }
    assert find[("ServiceAccount", source_account)]["automountServiceAccountToken"] is False
    assert not [d for d in documents if d["kind"] == "RoleBinding" and d["subjects"][0]["name"] == source_account]


def test_rendered_drop_events_are_current() -> None:
    assert (REPO / "argo" / "drop-events.yaml").read_text() == rendered()["drop-events.yaml"]


@pytest.mark.skipif(not SCHEMAS.is_dir() and not os.environ.get("CI"), reason=f"no schemas at {SCHEMAS}")
def test_rendered_drop_events_lint_clean() -> None:
    assert lint_paths([REPO / "argo" / "drop-events.yaml"], SCHEMAS) == []


def test_cluster_up_says_how_to_deliver_a_drop_to_minio() -> None:
    script = (REPO / "scripts" / "cluster-up.sh").read_text()

    assert "svc/minio 9000:9000" in script and "fashion-drops" in script


# -- the cluster's reconciler: drops no notification reached ----------------------------------------


def reconcile(store_uri: str, env: dict[str, str], kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    """`fashion-pipeline reconcile-drops` as the CronWorkflow's step runs it."""
    return subprocess.run(
        [CLI, "--store", store_uri, "reconcile-drops", "--namespace", pipeline.NAMESPACE],
        env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_reconciler_submits_each_drop_no_sensor_started_once_with_the_sensors_arguments(
    tmp_path: Path, bucket: str, s3_env: S3Server
) -> None:
    from kserve_sim import KServeSim
    from kubernetes import client, config

    store_uri = f"s3://{bucket}"
    store = open_store(store_uri)
    for drop_id in ("missed", "seen"):
        delivered = deliver(
            write_drop(tmp_path / drop_id, n_train=50, n_test=20), store_uri, s3_env.env(), "--id", drop_id
        )
        assert delivered.returncode == 0, delivered.stderr
    store.write_bytes("incoming/bad/drop.json", b'{"drop_id": "bad", "created": "yesterday"}')
    store.write_bytes("incoming/partial/train-images-idx3-ubyte.gz", b"not yet")

    with KServeSim(tmp_path / "cluster") as sim:
        sim.add_workflow_template(pipeline.manifest())
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig", pipeline.NAMESPACE)
        # The Sensor saw "seen": the Workflow it created, through the API as Argo Events does.
        seen_metadata = store.user_metadata("incoming/seen/drop.json")["fashion-drop"]
        sensor_workflow = drop_sensor.drop_sensor_workflow(
            minio_record(bucket, "incoming/seen/drop.json", seen_metadata), drop_sensor.sensor(store_uri)
        )
        api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
        api.create_namespaced_custom_object("argoproj.io", "v1alpha1", pipeline.NAMESPACE, "workflows", sensor_workflow)

        # The API server is restarting: the missed drop is not logged, the pass fails, the others are still handled.
        sim.fail_workflow_creates(1)
        first = reconcile(store_uri, s3_env.env(), kubeconfig)
        assert first.returncode == 1, first.stderr
        assert "failed     missed" in first.stdout and "503" in first.stdout and "refused    bad" in first.stdout
        assert "Traceback" not in first.stderr
        assert sorted(name for _, name in sim.workflows) == ["drop-seen"]
        assert DropLog(store).accepted("seen") and not DropLog(store).accepted("missed")

        second = reconcile(store_uri, s3_env.env(), kubeconfig)
        assert second.returncode == 0, second.stderr
        assert "submitted  missed  drop-missed" in second.stdout and "seen" not in second.stdout
        submitted = sim.workflows[(pipeline.NAMESPACE, "drop-missed")]
        assert submitted["status"] == {"phase": "Pending"}  # its template exists and declares every argument

        # Gone after its ttlStrategy, still not run again; nothing new is created by later passes.
        del sim.workflows[(pipeline.NAMESPACE, "drop-missed")]
        creates = sum(1 for r in sim.requests if r["method"] == "POST")
        third = reconcile(store_uri, s3_env.env(), kubeconfig)
        assert third.returncode == 0 and "submitted" not in third.stdout
        assert sum(1 for r in sim.requests if r["method"] == "POST") == creates

    # What the reconciler created is what the Sensor would have created for that drop, but for who started it.
    missed_metadata = store.user_metadata("incoming/missed/drop.json")["fashion-drop"]
    as_sensor = drop_sensor.drop_sensor_workflow(
        minio_record(bucket, "incoming/missed/drop.json", missed_metadata), drop_sensor.sensor(store_uri)
    )
    mine = {p["name"]: p["value"] for p in submitted["spec"]["arguments"]["parameters"]}
    theirs = {p["name"]: p["value"] for p in as_sensor["spec"]["arguments"]["parameters"]}
    assert {k: v for k, v in mine.items() if k != "trigger"} == {k: v for k, v in theirs.items() if k != "trigger"}
    assert {**json.loads(mine["trigger"]), "via": "sensor/fashion-drops"} == json.loads(theirs["trigger"])
    assert json.loads(mine["trigger"])["via"] == "cronworkflow/fashion-drops-reconcile"
    assert submitted["metadata"]["labels"] == as_sensor["metadata"]["labels"]
    assert {r["run"] for r in DropLog(store).runs()} == {"drop-missed", "drop-seen"}
    assert DropLog(store).refusals("bad")


def test_the_reconciler_runs_under_its_own_account_that_may_only_create_workflows() -> None:
    documents = [doc for doc in yaml.safe_load_all((REPO / "argo" / "rbac.yaml").read_text()) if doc]
    cron = drop_reconcile.manifest()
    account = cron["spec"]["workflowSpec"]["serviceAccountName"]
    [binding] = [d for d in documents if d["kind"] == "RoleBinding" and d["subjects"][0]["name"] == account]
    [role] = [d for d in documents if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"]]

    assert {(r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]} == {
        ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
        ("argoproj.io", "workflows"): {"create"},
    }
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedules"] == ["*/10 * * * *"]
    [template] = cron["spec"]["workflowSpec"]["templates"]
    assert template["container"]["image"] == templates.IMAGE  # the Kubernetes client is not in the slim one
    assert (REPO / "argo" / "drop-reconcile.yaml").read_text() == rendered()["drop-reconcile.yaml"]
