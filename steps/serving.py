"""The local model server: KServe's Python ModelServer serving `fashion-mnist` from the registry.

- V1 `POST /v1/models/fashion-mnist:predict` answers like TF Serving for our SavedModel:
  `{"predictions": [{"probabilities": [...], "class_id": k}, ...]}`; V2 `POST .../infer` too.
- Production is the registry's `production` alias; a `canary` alias with a `percent` takes
  that share of requests (like KServe's `canaryTrafficPercent`). Every answer names the
  version that served it in the `X-Model-Version` header.
- Alias changes are picked up by a watcher: the new version is loaded and warmed in the
  background, then swapped in with one reference assignment; a version that fails to load is
  never swapped in, and the old one keeps serving.
- Bad requests get a 4xx with a JSON error, never a 5xx.

Import this module only in the server process: `import kserve` parses `sys.argv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from steps.errors import UserError
from steps.hardware import cpu_has_bf16
from steps.model import load_serving_function
from steps.registry import MODEL_NAME, Registry

log = logging.getLogger(__name__)

MAX_BATCH = 256  # images per request
MAX_BODY_BYTES = 8 * 1024 * 1024  # a full batch as JSON text is ~1.2 MB
VERSION_HEADER = "X-Model-Version"
ROLE_HEADER = "X-Model-Role"
ROUTE_HEADER = "X-Model-Route"  # a request may pin `canary` or `production`, like KServe's tag URLs


class BadRequest(ValueError):
    """The request is wrong; the message says how."""


def parse_v1(body: Any) -> np.ndarray:
    """V1 `{"instances": [...]}` → float32 [N,28,28]; each instance is 28x28, 784 values or {"image": ...}."""
    if isinstance(body, bytes | str):
        raise BadRequest("the body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"instances": [...]}')
    if set(body) != {"instances"}:
        unexpected = ", ".join(map(repr, sorted(set(body) - {"instances"})))
        raise BadRequest(
            f'unexpected key(s) {unexpected}: send {{"instances": [...]}}' if unexpected else 'missing "instances"'
        )
    instances = body["instances"]
    if not isinstance(instances, list):
        raise BadRequest('"instances" must be a list of images')
    if isinstance(instances[0] if instances else None, dict):
        if not all(isinstance(i, dict) and set(i) == {"image"} for i in instances):
            raise BadRequest('named instances must each be {"image": [...]}')
        instances = [i["image"] for i in instances]
    return to_images(instances)


def to_images(values: Any, shape: list[int] | None = None) -> np.ndarray:
    """Validate pixel data: [N,28,28] or [N,784], numbers in 0..255, 1 <= N <= MAX_BATCH."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"instances are not a regular array of numbers ({exc})") from exc
    if array.dtype.kind not in "iuf":
        raise BadRequest("pixel values must be numbers")
    if shape is not None:
        if array.ndim != 1 or math.prod(shape) != array.size:
            raise BadRequest(f"data holds {array.size} values but shape {shape} needs {math.prod(shape)}")
        array = array.reshape(shape)
    if array.ndim >= 1 and len(array) == 0:
        raise BadRequest("the batch is empty: send at least one image")
    if array.ndim == 2 and array.shape[1] == 784:
        array = array.reshape(-1, 28, 28)
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise BadRequest(f"images must be [N,28,28] or [N,784], got {list(array.shape)}")
    if len(array) > MAX_BATCH:
        raise BadRequest(f"batch of {len(array)} images is over the maximum of {MAX_BATCH}: split it")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise BadRequest("pixel values must be finite (no NaN or infinity)")
    if array.min() < 0 or array.max() > 255:
        raise BadRequest("pixel values must be in 0..255 (raw pixels, as in the training data)")
    return array


# A request's answer: probabilities [N, 10] and class ids [N].
Prediction = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Loaded:
    version: str
    serve: Any  # the SavedModel's serving_default

    def predict(self, images: np.ndarray) -> Prediction:
        import tensorflow as tf

        out = self.serve(image=tf.constant(images))
        return out["probabilities"].numpy(), out["class_id"].numpy()


def _load_warm(version: str, model_dir: Any) -> Loaded:
    """Load and warm a SavedModel: the first calls trace and allocate, so requests never pay for them."""
    loaded = Loaded(version=version, serve=load_serving_function(model_dir))
    for batch in (1, 32):
        loaded.predict(np.zeros((batch, 28, 28), np.float32))
    return loaded


def load_version(registry: Registry, version: str) -> Loaded:
    return _load_warm(version, registry.local_model_dir(version))


# A request waiting for the inference thread: its model, its images, where its answer goes.
Waiting = tuple[Loaded, np.ndarray, asyncio.Future[Prediction]]


class Batcher:
    """One inference thread; requests waiting while it works are merged into one call per version.

    Concurrent TensorFlow calls on two cores only fight over them; one call on many images uses
    them better. An idle batcher adds no waiting: a lone request runs at once.
    """

    def __init__(self, max_images: int = 512) -> None:
        self.max_images = max_images
        self._queue: queue.SimpleQueue[Waiting | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    async def predict(self, loaded: Loaded, images: np.ndarray) -> Prediction:
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.put((loaded, images, future))
        return await future

    def _work(self) -> None:
        while (first := self._queue.get()) is not None:
            pending = [first]
            size = len(first[1])
            while size < self.max_images:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                pending.append(item)
                size += len(item[1])
            by_version: dict[str, list[Waiting]] = {}
            for item in pending:
                by_version.setdefault(item[0].version, []).append(item)
            for group in by_version.values():
                self._run(group)

    @staticmethod
    def _run(group: list[Waiting]) -> None:
        try:
            images = group[0][1] if len(group) == 1 else np.concatenate([images for _, images, _ in group])
            probabilities, class_id = group[0][0].predict(images)
        except Exception as exc:  # delivered to each waiting request
            for _, _, future in group:
                future.get_loop().call_soon_threadsafe(_set_exception, future, exc)
            return
        start = 0
        for _, images, future in group:
            end = start + len(images)
            result = (probabilities[start:end], class_id[start:end])
            future.get_loop().call_soon_threadsafe(_set_result, future, result)
            start = end

    def close(self, timeout_s: float = 30) -> None:
        """Answer what is queued, then end the thread."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def _set_result(future: asyncio.Future[Prediction], result: Prediction) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Prediction], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Router:
    """Which version answers: production, or the canary for its share of requests."""

    def __init__(self) -> None:
        self.production: Loaded | None = None
        self.canary: Loaded | None = None
        self.percent = 0
        self._credit = 0
        self._lock = threading.Lock()

    def pick(self, route: str = "") -> tuple[Loaded, str]:
        """`route` 'canary' or 'production' pins the choice (for probing); otherwise traffic is split."""
        production, canary, percent = self.production, self.canary, self.percent
        if production is None:
            raise RuntimeError("no model loaded")
        if route == "canary" and canary is not None:
            return canary, "canary"
        if route == "production":
            return production, "production"
        if canary is None or percent <= 0:
            return production, "production"
        # Smooth weighted round-robin: exactly `percent` of every 100 requests go to the canary.
        with self._lock:
            self._credit += percent
            if self._credit >= 100:
                self._credit -= 100
                return canary, "canary"
        return production, "production"


class AliasWatcher:
    """Keeps the router in step with the registry's aliases."""

    def __init__(self, registry: Registry, router: Router) -> None:
        self.registry = registry
        self.router = router
        self.cache: dict[str, Loaded] = {}
        self.failed: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, poll_seconds: float) -> None:
        """Follow the aliases every `poll_seconds` in a thread of its own, until `stop`."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._follow, args=(poll_seconds,), name="alias-watcher", daemon=True)
        self._thread.start()

    def _follow(self, poll_seconds: float) -> None:
        while not self._stopping.wait(poll_seconds):
            try:
                self.sync()
            except Exception as exc:  # the watcher must survive a flaky store
                log.warning("alias check failed: %s", exc)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 30) -> None:
        """Stop following; a version being loaded finishes loading first."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _get(self, version: str) -> Loaded | None:
        if version in self.cache:
            return self.cache[version]
        if version in self.failed:
            return None
        try:
            loaded = load_version(self.registry, version)
        except Exception as exc:  # any failure to load must leave the old version serving
            self.failed.add(version)
            log.error(
                "version %s failed to load; still serving %s: %s",
                version,
                self.router.production.version if self.router.production else "nothing",
                exc,
            )
            return None
        self.cache = {v: lv for v, lv in self.cache.items() if v in self._wanted()} | {version: loaded}
        return loaded

    def _wanted(self) -> set[str]:
        return {lv.version for lv in (self.router.production, self.router.canary) if lv}

    def sync(self) -> None:
        """Load what the aliases name (in this thread), then swap references."""
        production = self.registry.alias("production")
        if production is None:
            if self.router.production is None:
                raise UserError(f"nothing to serve: the registry at {self.registry.store.uri} has no production model")
        elif self.router.production is None or production["version"] != self.router.production.version:
            loaded = self._get(production["version"])
            if loaded is not None:
                previous = self.router.production.version if self.router.production else None
                self.router.production = loaded
                log.info("production is now %s (was %s)", loaded.version, previous or "nothing")
        canary = self.registry.alias("canary")
        if canary is None:
            if self.router.canary is not None:
                log.info("canary %s removed", self.router.canary.version)
            self.router.canary, self.router.percent = None, 0
        else:
            percent = int(canary.get("percent", 0))
            current = self.router.canary
            if current is None or current.version != canary["version"]:
                loaded = self._get(canary["version"])
                if loaded is not None:
                    self.router.canary, self.router.percent = loaded, percent
                    log.info("canary %s takes %d%% of requests", loaded.version, percent)
            elif percent != self.router.percent:
                self.router.percent = percent
                log.info("canary %s now takes %d%% of requests", current.version, percent)


class BodyCap:
    """ASGI middleware: a POST must say its length, and stay under MAX_BODY_BYTES (413 otherwise).

    Plain ASGI, not Starlette's BaseHTTPMiddleware, which costs about a millisecond per request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"").decode()
            error = None
            if not length.isdigit():
                status, error = 411, "send a Content-Length header"
            elif int(length) > MAX_BODY_BYTES:
                status = 413
                error = f"request body of {length} bytes is over the {MAX_BODY_BYTES}-byte cap: send smaller batches"
            if error is not None:
                from starlette.responses import JSONResponse

                await JSONResponse({"error": error}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def load_storage_uri(storage_uri: str) -> Loaded:
    """A fixed version from its root (what KServe's `storageUri` names): `<root>/1` is the SavedModel."""
    from steps.registry import root_version
    from steps.storage import open_store

    store = open_store(storage_uri)
    # A copy of the root (KServe's /mnt/models) no longer ends with the version id: its manifest names it.
    version = root_version(store) or storage_uri.rstrip("/").rsplit("/", 1)[-1]
    return _load_warm(version, store.local_dir("1"))


def build_model(router: Router, watcher: AliasWatcher | None, poll_seconds: float) -> Any:
    """The kserve.Model serving `fashion-mnist` (kserve is imported here, in the server process).

    With a watcher the versions follow the registry's aliases; without, the router's model is fixed.
    Its lifecycle is kserve.Model's: `load` makes it ready and starts the inference thread and the
    alias watcher; `stopping` turns readiness off when the server begins to stop; `stop` ends both
    threads once the last request is answered.
    """
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class FashionModel(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(MODEL_NAME, return_response_headers=True)
            self.batcher = Batcher()
            self.watcher = watcher

        def load(self) -> bool:
            if watcher is not None:
                watcher.sync()
            self.ready = router.production is not None
            if self.ready:
                self.batcher.start()
                if watcher is not None:
                    watcher.start(poll_seconds)
            return self.ready

        def stopping(self) -> None:
            """The server stops taking requests: readiness goes false first, as a pod's does."""
            self.ready = False

        def stop(self) -> None:
            self.ready = False
            if watcher is not None:
                watcher.stop()
            self.batcher.close()

        async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            try:
                if isinstance(payload, InferRequest):
                    if len(payload.inputs) != 1:
                        raise BadRequest("send exactly one input tensor (the images)")
                    tensor = payload.inputs[0]
                    return ("v2", payload.id, to_images(tensor.data, list(tensor.shape)))
                return ("v1", None, parse_v1(payload))
            except BadRequest as exc:
                raise InvalidInput(str(exc)) from exc

        async def predict(
            self, request: Any, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
        ) -> Any:
            protocol, request_id, images = request
            served, role = router.pick((headers or {}).get(ROUTE_HEADER.lower(), ""))
            probabilities, class_id = await self.batcher.predict(served, images)
            if response_headers is not None:
                response_headers[VERSION_HEADER] = served.version
                response_headers[ROLE_HEADER] = role
            if protocol == "v1":
                return {
                    "predictions": [
                        {"probabilities": p.tolist(), "class_id": int(c)}
                        for p, c in zip(probabilities, class_id, strict=True)
                    ]
                }
            outputs = [
                InferOutput("probabilities", list(probabilities.shape), "FP32", probabilities),
                InferOutput("class_id", list(class_id.shape), "INT64", class_id),
            ]
            return InferResponse(
                response_id=request_id or str(uuid.uuid4()),
                model_name=MODEL_NAME,
                model_version=served.version,
                infer_outputs=outputs,
            )

    return FashionModel()


SERVING_PRECISIONS = ("auto", "bfloat16", "float32")


def configure_runtime(precision: str, threads: int) -> str:
    """Set TensorFlow up for serving, before any model loads; returns the precision in effect.

    One intra-op thread leaves the other core to HTTP and JSON; with bfloat16, Grappler rewrites the
    float32 graph for oneDNN (the model's outputs stay float32). Measured on 2 cores: batch 32 in
    2.5 ms instead of 5.7 ms, one image in 0.9 ms instead of 1.3 ms, 99.6% identical classes.
    """
    import tensorflow as tf

    if precision not in SERVING_PRECISIONS:
        raise UserError(f"unknown serving precision {precision!r}: choose one of {', '.join(SERVING_PRECISIONS)}")
    if precision == "auto":
        precision = "bfloat16" if cpu_has_bf16() else "float32"
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if precision == "bfloat16":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    return precision


class ModelServer:
    """The process side of serving, as kserve's ModelServer: socket, HTTP server, stop.

    Signals stay with the caller, which calls `stop` (readiness off, no new connections, requests in
    flight answered, then the model's threads end) or `force` (open connections dropped) from any
    thread. uvicorn's own handlers are left out: they ignore a second SIGTERM and re-raise the
    signal after a clean stop, which makes a clean stop look like a crash.
    """

    def __init__(self, model: Any, host: str, port: int, access_log: bool = False, reuse_port: bool = False) -> None:
        from kserve.model_repository import ModelRepository
        from kserve.model_server import app
        from kserve.protocol.dataplane import DataPlane
        from kserve.protocol.model_repository_extension import ModelRepositoryExtension
        from kserve.protocol.rest.server import RESTServer

        self.model = model
        self.host, self.port, self.reuse_port = host, port, reuse_port
        repository = ModelRepository()
        repository.update(model)
        app.add_middleware(BodyCap)

        class LeanRESTServer(RESTServer):  # type: ignore[misc]
            """KServe's REST server without its per-request timing middleware (two log lines per request)."""

            def _add_middlewares(self, app: Any) -> None:
                pass

        if not access_log:
            logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        self.rest = LeanRESTServer(
            "kserve.model_server:app",
            DataPlane(model_registry=repository),
            ModelRepositoryExtension(model_registry=repository),
            http_port=port,
        )
        self.rest.config.host = host  # KServe binds 0.0.0.0; we bind what we were told

        class CallerSignals(type(self.rest._server)):  # type: ignore[misc]
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.http = CallerSignals(self.rest.config)
        self.rest._server = self.http

    def run(self) -> None:
        """Serve until `stop` or `force`; the model's threads are ended before this returns."""
        log.info("serving %s on http://%s:%d", MODEL_NAME, self.host, self.port)
        try:
            if not self.reuse_port:
                asyncio.run(self.rest.start())
                return
            # One of several processes sharing the port: the kernel spreads connections over them.
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted connections inherit it
            sock.bind((self.host, self.port))
            sock.listen(2048)
            self.rest.create_application()
            asyncio.run(self.http.serve(sockets=[sock]))
        finally:
            self.model.stop()
            log.info("stopped")

    def stop(self) -> None:
        self.model.stopping()
        self.http.should_exit = True

    def force(self) -> None:
        self.model.stopping()
        self.http.force_exit = True
        self.http.should_exit = True


def build_server(
    registry: Registry | None,
    host: str,
    port: int,
    poll_seconds: float = 2.0,
    storage_uri: str = "",
    precision: str = "auto",
    threads: int = 1,
    access_log: bool = False,
    reuse_port: bool = False,
) -> ModelServer:
    """Load the model (the registry's aliases, or one fixed version) and set the server up around it."""
    precision = configure_runtime(precision, threads)
    log.info("inference in %s on %s thread(s)", precision, threads or "all")
    router = Router()
    if storage_uri:
        router.production = load_storage_uri(storage_uri)
        watcher = None
    elif registry is not None:
        watcher = AliasWatcher(registry, router)
    else:
        raise UserError("serve needs a registry or a storage URI")
    import warnings

    # FastAPI warns about KServe's response class on every request.
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")
    model = build_model(router, watcher, poll_seconds)
    model.load()
    return ModelServer(model, host, port, access_log, reuse_port)
