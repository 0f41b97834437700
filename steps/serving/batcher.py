"""Requests waiting for inference, merged into one TensorFlow call per version."""

from __future__ import annotations

import asyncio
import queue
import threading

import numpy as np

from steps.serving.loading import Loaded, Prediction

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
