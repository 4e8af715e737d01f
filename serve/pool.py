"""The engines behind one service (one per GPU, or one): each steps on its own thread with
in-flight batching, a request goes to the least loaded engine, and a full queue refuses new
pieces instead of letting waits grow without bound."""

from __future__ import annotations

import threading

from notagen_trt.runtime.engine import Engine, Listener, PieceHandle, PieceRequest


class QueueFull(Exception):
    """Every row is busy and ``max_queue`` pieces already wait for one."""


class EnginePool:
    def __init__(self, engines: list[Engine], max_queue: int) -> None:
        if not engines:
            raise ValueError("a pool needs at least one engine")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.engines, self.max_queue = engines, max_queue
        self._lock = threading.Lock()
        self._closed = False
        for engine in engines:
            engine.start()

    @property
    def backend(self) -> str:
        return self.engines[0].executor.name

    @property
    def made_by(self) -> str:
        """The backend, model and precision, as the line that opens each piece's .abc says."""
        return self.engines[0].made_by

    @property
    def rows(self) -> int:
        return sum(e.executor.rows for e in self.engines)

    @property
    def active(self) -> int:
        return sum(e.active for e in self.engines)

    def waiting(self, index: int | None = None) -> int:
        """Pieces that wait for a row (a piece submitted while a row is free is not waiting,
        though the engine admits it only at its next step)."""
        engines = self.engines if index is None else [self.engines[index]]
        return sum(max(0, e.active + e.queued - e.executor.rows) for e in engines)

    def submit(self, request: PieceRequest, listener: Listener) -> PieceHandle:
        """Queue a piece on the least loaded engine; QueueFull when ``max_queue`` pieces wait."""
        with self._lock:  # the check and the submit together, or two requests could both take the last place
            if self._closed:
                raise QueueFull("the service is shutting down")
            if self.waiting() >= self.max_queue:
                raise QueueFull(f"the queue is full ({_waiting(self.max_queue)} for a row)")
            engine = min(self.engines, key=lambda e: (e.active + e.queued) / e.executor.rows)
            return engine.submit(request, listener)

    def unready(self) -> str:
        """'' when a new piece would be taken now, else why not (one line)."""
        if self._closed:
            return "the service is shutting down"
        if self.waiting() >= self.max_queue:
            return f"the queue is full ({_waiting(self.max_queue)} for a row)"
        return ""

    def close(self) -> None:
        """End queued and running pieces as cancelled and release the backends (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for engine in self.engines:
            engine.close()


def _waiting(n: int) -> str:
    return f"{n} piece waits" if n == 1 else f"{n} pieces wait"
