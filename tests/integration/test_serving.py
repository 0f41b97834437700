"""The local model server as a user meets it: real processes, real HTTP, real models."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import CLI, ServerProcess, TrainedStore

from steps.dataset import CLASS_NAMES
from steps.registry import Registry
from steps.serving.client import PredictionClient, load_image
from steps.serving.protocol import MAX_BATCH, MAX_BODY_BYTES
from steps.storage import open_store

PREDICT = "/v1/models/fashion-mnist:predict"


@pytest.fixture(scope="module")
def registry(trained_store: TrainedStore) -> Registry:
    registry = Registry(open_store(trained_store.store_uri))
    registry.set_alias("production", trained_store.good, "serving tests start from the good model", actor="test")
    return registry


@pytest.fixture(scope="module")
def server(trained_store: TrainedStore, registry: Registry) -> Iterator[ServerProcess]:
    process = ServerProcess(trained_store.store_uri)
    try:
        yield process
    finally:
        process.stop()


def wait_serving(server: ServerProcess, version: str, route: str = "production", timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.post(
            server.url + PREDICT, json={"instances": image_batch(1)}, headers={"X-Model-Route": route}, timeout=10
        )
        if response.headers.get("X-Model-Version") == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server does not serve {version} as {route}")


def image_batch(n: int) -> list[list[list[float]]]:
    return np.random.default_rng(n).integers(0, 256, (n, 28, 28)).astype(float).tolist()


def test_v1_answers_like_tf_serving_and_names_the_version(server: ServerProcess, trained_store: TrainedStore) -> None:
    response = requests.post(server.url + PREDICT, json={"instances": image_batch(3)}, timeout=10)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 3 and set(predictions[0]) == {"probabilities", "class_id"}
    assert len(predictions[0]["probabilities"]) == 10
    assert predictions[0]["class_id"] == int(np.argmax(predictions[0]["probabilities"]))
    assert response.headers["X-Model-Version"] == trained_store.good
    flat = requests.post(server.url + PREDICT, json={"instances": [np.zeros(784).tolist()]}, timeout=10)
    assert flat.status_code == 200 and len(flat.json()["predictions"]) == 1


def test_v2_infer_and_per_model_readiness(server: ServerProcess) -> None:
    body: dict[str, Any] = {
        "id": "req-1",
        "inputs": [{"name": "image", "shape": [2, 28, 28], "datatype": "FP32", "data": np.zeros(2 * 784).tolist()}],
    }
    response = requests.post(server.url + "/v2/models/fashion-mnist/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["id"] == "req-1"
    outputs = {o["name"]: o for o in data["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10] and outputs["class_id"]["datatype"] == "INT64"
    assert requests.get(server.url + "/v2/models/fashion-mnist/ready", timeout=5).status_code == 200
    assert requests.get(server.url + "/v2/models/other/ready", timeout=5).status_code == 404
    metrics = requests.get(server.url + "/metrics", timeout=5)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


BAD_REQUESTS: dict[str, tuple[bytes, dict[str, str]]] = {
    "invalid JSON": (b'{"instances": [', {}),
    "not an object": (b"[1, 2, 3]", {}),
    "wrong top-level key": (json.dumps({"images": [[0] * 784]}).encode(), {}),
    "extra top-level key": (json.dumps({"instances": [[0] * 784], "x": 1}).encode(), {}),
    "instances not a list": (json.dumps({"instances": "cat"}).encode(), {}),
    "empty batch": (json.dumps({"instances": []}).encode(), {}),
    "wrong shape 27x28": (json.dumps({"instances": [[[0] * 28] * 27]}).encode(), {}),
    "wrong flat length": (json.dumps({"instances": [[0] * 783]}).encode(), {}),
    "ragged": (json.dumps({"instances": [[0] * 784, [0] * 10]}).encode(), {}),
    "strings": (json.dumps({"instances": [["a"] * 784]}).encode(), {}),
    "booleans": (json.dumps({"instances": [[True] * 784]}).encode(), {}),
    "nested objects": (json.dumps({"instances": [{"pixels": [0] * 784}]}).encode(), {}),
    "out of range": (json.dumps({"instances": [[300] * 784]}).encode(), {}),
    "negative": (json.dumps({"instances": [[-1] * 784]}).encode(), {}),
    "NaN": (b'{"instances": [[' + b",".join([b"NaN"] * 784) + b"]]}", {}),
    "infinity": (b'{"instances": [[' + b",".join([b"Infinity"] * 784) + b"]]}", {}),
    "over max batch": (json.dumps({"instances": np.zeros((MAX_BATCH + 1, 784), int).tolist()}).encode(), {}),
    "v2 wrong shape": (
        json.dumps({"inputs": [{"name": "image", "shape": [1, 10], "datatype": "FP32", "data": [0] * 10}]}).encode(),
        {"v2": "1"},
    ),
    "v2 shape does not match data": (
        json.dumps(
            {"inputs": [{"name": "image", "shape": [2, 28, 28], "datatype": "FP32", "data": [0] * 784}]}
        ).encode(),
        {"v2": "1"},
    ),
    "v2 no inputs": (json.dumps({"inputs": []}).encode(), {"v2": "1"}),
    "v2 garbage": (b'{"inputs": "x"}', {"v2": "1"}),
}


def test_bad_requests_get_4xx_with_json_error_and_the_server_keeps_serving(server: ServerProcess) -> None:
    good = {"instances": image_batch(1)}
    for case, (body, flags) in BAD_REQUESTS.items():
        url = server.url + ("/v2/models/fashion-mnist/infer" if flags.get("v2") else PREDICT)
        response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text[:200]}"
        assert response.json(), case  # a JSON error body saying what was wrong
        assert requests.post(server.url + PREDICT, json=good, timeout=10).status_code == 200, case
    huge = b'{"instances": [' + b" " * (MAX_BODY_BYTES + 1) + b"]}"
    response = requests.post(server.url + PREDICT, data=huge, timeout=30)
    assert response.status_code == 413 and "over the" in response.json()["error"]
    assert server.proc.poll() is None
    assert requests.post(server.url + PREDICT, json=good, timeout=10).status_code == 200


def test_hot_swap_under_continuous_load_drops_no_request(
    server: ServerProcess, registry: Registry, trained_store: TrainedStore
) -> None:
    versions: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        body = {"instances": image_batch(4)}
        while not stop.is_set():
            try:
                response = session.post(server.url + PREDICT, json=body, timeout=10)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:100]}")
                versions[response.headers.get("X-Model-Version", "?")] += 1
            except requests.RequestException as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        registry.set_alias("production", trained_store.weak, "hot swap test", actor="test")
        deadline = time.monotonic() + 180
        while versions[trained_store.weak] < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        registry.set_alias("production", trained_store.good, "hot swap test done", actor="test")
        wait_serving(server, trained_store.good)
    assert failures == []
    assert versions[trained_store.good] > 0 and versions[trained_store.weak] >= 20


def test_a_version_that_fails_to_load_is_never_swapped_in(
    server: ServerProcess, registry: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a graph")
    version = registry.publish(broken, {"note": "deliberately broken"})
    wait_serving(server, trained_store.good)
    registry.set_alias("production", version, "load failure test", actor="test")
    try:
        deadline = time.monotonic() + 180
        while f"version {version} failed to load" not in server.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        response = requests.post(server.url + PREDICT, json={"instances": image_batch(1)}, timeout=10)
        assert response.status_code == 200
        assert response.headers["X-Model-Version"] == trained_store.good
    finally:
        registry.set_alias("production", trained_store.good, "load failure test done", actor="test")
    assert f"version {version} failed to load" in server.logs()


def test_canary_alias_splits_traffic_and_each_answer_names_its_version(
    server: ServerProcess, registry: Registry, trained_store: TrainedStore
) -> None:
    registry.set_alias("canary", trained_store.weak, "split test", actor="test", extra={"percent": 30})
    try:
        session = requests.Session()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            pinned = session.post(
                server.url + PREDICT,
                json={"instances": image_batch(1)},
                headers={"X-Model-Route": "canary"},
                timeout=10,
            )
            if pinned.headers.get("X-Model-Version") == trained_store.weak:
                break
            time.sleep(0.2)
        roles = Counter(
            session.post(server.url + PREDICT, json={"instances": image_batch(1)}, timeout=10).headers["X-Model-Role"]
            for _ in range(100)
        )
    finally:
        registry.set_alias("canary", None, "split test done", actor="test")
    assert roles == {"canary": 30, "production": 70}


def test_predict_cli_classifies_real_test_images_saved_as_png(
    server: ServerProcess, trained_store: TrainedStore, real_mirror: Path, tmp_path: Path
) -> None:
    from PIL import Image

    images = np.frombuffer(
        gzip.decompress((real_mirror / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16
    ).reshape(-1, 28, 28)
    labels = np.frombuffer(
        gzip.decompress((real_mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8
    )
    picks = np.random.default_rng(0).choice(len(images), 500, replace=False)
    paths = []
    for i in picks:
        path = tmp_path / f"{i}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)

    client = PredictionClient(server.url, protocol="v2", batch_size=50)
    predictions = client.predict(np.stack([load_image(p) for p in paths]))
    accuracy = np.mean([p.class_id == labels[i] for p, i in zip(predictions, picks, strict=True)])
    assert accuracy >= 0.80, accuracy  # the model scores ~86% on the whole test split

    proc = subprocess.run(
        [CLI, "predict", "--url", server.url, *map(str, paths[:40])], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.strip().splitlines()[1:]
    predicted = [next(name for name in CLASS_NAMES if f"  {name} " in row) for row in rows]
    correct = sum(CLASS_NAMES[labels[i]] == name for i, name in zip(picks[:40], predicted, strict=True))
    assert correct >= 34
    assert all(trained_store.good in row for row in rows)


def test_predict_cli_refuses_unreadable_images_and_a_dead_server(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    proc = subprocess.run([CLI, "predict", str(tmp_path / "notes.png")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "notes.png: not a readable PNG or JPEG image" in proc.stderr
    assert "Traceback" not in proc.stderr
    from PIL import Image

    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "ok.png")
    env = {**os.environ}
    proc = subprocess.run(
        [CLI, "predict", "--url", "http://127.0.0.1:9", str(tmp_path / "ok.png")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode != 0 and "cannot reach http://127.0.0.1:9" in proc.stderr


def test_load_image_converts_any_size_photo_to_the_training_look(tmp_path: Path) -> None:
    from PIL import Image

    photo = np.full((200, 120), 255, np.uint8)  # a dark shoe on a white background
    photo[80:120, 10:110] = 30
    Image.fromarray(photo).convert("RGB").save(tmp_path / "shoe.jpg")
    image = load_image(tmp_path / "shoe.jpg")
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert image[14, 14] > 200 and image[0, 0] < 10  # light object on a dark ground, centred


def test_several_worker_processes_share_the_port_and_stop_together(trained_store: TrainedStore) -> None:
    import psutil

    root = Registry(open_store(trained_store.store_uri)).version_uri(trained_store.good)
    process = ServerProcess(trained_store.store_uri, "--storage-uri", root, "--workers", "2")
    try:
        children = psutil.Process(process.proc.pid).children()
        assert len(children) == 2
        session = requests.Session()
        for _ in range(10):
            fresh = requests.post(process.url + PREDICT, json={"instances": image_batch(2)}, timeout=10)
            assert fresh.status_code == 200 and fresh.headers["X-Model-Version"] == trained_store.good
            assert session.post(process.url + PREDICT, json={"instances": image_batch(1)}, timeout=10).ok
    finally:
        process.stop()
    assert process.proc.returncode == 0
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


def test_workers_die_with_their_supervisor_even_when_it_is_killed(trained_store: TrainedStore) -> None:
    import psutil

    root = Registry(open_store(trained_store.store_uri)).version_uri(trained_store.good)
    process = ServerProcess(trained_store.store_uri, "--storage-uri", root, "--workers", "2")
    children = psutil.Process(process.proc.pid).children()
    try:
        assert len(children) == 2
    finally:
        process.proc.kill()  # SIGKILL: no handler runs, the workers lead process groups of their own
        process.proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    assert not alive, [child.cmdline() for child in alive]
