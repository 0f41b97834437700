"""Fixtures: synthetic IDX drops, a real HTTP mirror, a real S3 server (moto) reached through MinIO."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steps.registry import MODEL_NAME
from steps.serving.protocol import ready_path

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("FASHION_PIPELINE_SCHEMAS", REPO.parent / "shared" / "schemas"))
CLI = shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"
# Every node of the WorkflowTemplate, after a run that promotes.
PROMOTED_PHASES = {
    "fetch-dataset": "Succeeded",
    "train": "Succeeded",
    "evaluate": "Succeeded",
    "gate": "Succeeded",
    "rollout": "Succeeded",
    "onExit": "Succeeded",
}
SHARED_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
FILE_NAMES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    header = (0x803).to_bytes(4, "big") + n.to_bytes(4, "big") + rows.to_bytes(4, "big") + cols.to_bytes(4, "big")
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class lights up its own horizontal band, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + label * 2 : 4 + label * 2, 4:24] = 230
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_drop(directory: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """A valid custom Fashion-MNIST-shaped drop: four gzipped IDX files."""
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train = synthetic_split(n_train, seed)
    x_test, y_test = synthetic_split(n_test, seed + 1)
    payloads = {
        "train-images": idx_images(x_train),
        "train-labels": idx_labels(y_train),
        "test-images": idx_images(x_test),
        "test-labels": idx_labels(y_test),
    }
    for role, name in FILE_NAMES.items():
        (directory / name).write_bytes(gzip.compress(payloads[role], mtime=0))
    return directory


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    return write_drop(tmp_path / "drop")


@pytest.fixture(scope="session")
def real_mirror() -> Path:
    configured = os.environ.get("FASHION_MNIST_MIRROR")
    path = Path(configured) if configured else SHARED_DATA
    if not (path / FILE_NAMES["train-images"]).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real Fashion-MNIST not found at {path}: set FASHION_MNIST_MIRROR")
        pytest.skip(f"real Fashion-MNIST not found at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a directory; yields (base URL, directory)."""
    root = tmp_path / "http-root"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "testing-access"
    secret_key: str = "testing-secret"

    def env(self) -> dict[str, str]:
        return {
            "S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def make_bucket(self, name: str) -> None:
        from minio import Minio

        client = Minio(self.endpoint.removeprefix("http://"), self.access_key, self.secret_key, secure=False)
        if not client.bucket_exists(name):
            client.make_bucket(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-speaking server process (moto) on 127.0.0.1, stopped at the end of the session."""
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def seed_production(cwd: Path, env: dict[str, str], mirror: Path, reason: str) -> None:
    """The store named in `env`: the real dataset fetched, and a small model trained and in production."""
    for args in (
        ["fetch", "--data-url", str(mirror), "--out", str(cwd / "seed-fetch")],
        ["train", "--train-limit", "300", "--epochs", "1", "--out", str(cwd / "seed-train")],
        ["models", "promote", "latest", "--reason", reason],
    ):
        proc = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def bucket(s3_env: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test on the moto server."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    s3_env.make_bucket(name)
    return name


@dataclass
class TrainedStore:
    """A registry with real models: `good` (small-cnn, 20k images, 3 epochs, ~86%) and `weak` (tiny subset).

    `good` costs about 40 s on a 2-core AVX2 CPU: far better than `weak`, cheap enough for every machine.
    """

    root: Path
    dataset_uri: str
    good: str
    weak: str

    @property
    def store_uri(self) -> str:
        return str(self.root / "store")


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> TrainedStore:
    from steps.dataset import fetch_dataset
    from steps.registry import Registry
    from steps.storage import open_store
    from steps.train import TrainParams, train

    root = tmp_path_factory.mktemp("trained")
    store = open_store(str(root / "store"))
    dataset = fetch_dataset(store, [(str(real_mirror), False)])
    registry = Registry(store)
    good = train(
        dataset.uri,
        registry,
        TrainParams(epochs=3, train_limit=20000, seed=5, architecture="small-cnn"),
        root / "good",
        code_version="test",
    )
    weak = train(
        dataset.uri, registry, TrainParams(epochs=1, train_limit=1500, seed=6), root / "weak", code_version="test"
    )
    registry.set_alias("production", weak.version, "test fixture: start from the weak model", actor="test")
    return TrainedStore(root=root, dataset_uri=dataset.uri, good=good.version, weak=weak.version)


class ServerProcess:
    """`fashion-pipeline serve` in its own process on a free port; stopped by the test that started it."""

    def __init__(self, store_uri: str, *extra: str, poll: float = 0.3) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cli = shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"
        self.log = Path(store_uri).parent / f"server-{self.port}.log" if "://" not in store_uri else None
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [cli, "--store", store_uri, "serve", "--port", str(self.port), "--poll", str(poll), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 300) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
            try:
                if requests.get(self.url + ready_path(MODEL_NAME), timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s: {self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# Fixtures that train a model (or hand a test real data to train on): a test using one is `slow`.
TRAINING_FIXTURES = frozenset({"trained_store", "real_mirror", "quick_run_s"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything in tests/model trains, and so does any test using a training fixture: they are `slow`.

    `pytest -m "not slow"` leaves the lanes that never train (deselect with -m "not slow").
    """
    model_lane = Path(__file__).resolve().parent / "model"
    for item in items:
        trains = TRAINING_FIXTURES & set(getattr(item, "fixturenames", ()))
        if trains or model_lane in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


def dag_workflow(
    generate_name: str, tasks: list[dict[str, Any]], *templates: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    """A Workflow whose entrypoint `main` is a DAG of `tasks` over `templates` (plus any other spec fields)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": generate_name},
        "spec": {
            "entrypoint": "main",
            **spec,
            "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates],
        },
    }
