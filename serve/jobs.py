"""One request's piece: submitted to the pool, its engine-thread events handed to the request's
event loop, and its result made into a response (the ABC `generate` writes, and any scores)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator

from notagen_trt.runtime.continuation import Continuation
from notagen_trt.runtime.engine import Event, PieceRequest
from notagen_trt.runtime.outputs import convert
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.prompts import Prompt
from notagen_trt.runtime.render import piece_abc

from .metrics import ServiceMetrics
from .pool import EnginePool

DISCONNECT_POLL = 0.5  # seconds between checks that a waiting client is still there
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: its handler and --log-level apply


class ApiError(Exception):
    """A request the service answers with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str, outcome: str = "invalid", headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome, self.headers = status, message, outcome, headers or {}


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


class Job:
    def __init__(self, pool: EnginePool, metrics: ServiceMetrics, path: str, prompt: Prompt | None,
                 config: GenerationConfig, formats: list[str], stream: bool,
                 continuation: Continuation | None = None) -> None:
        self.metrics, self.path, self.prompt, self.config = metrics, path, prompt, config
        self.formats, self.stream, self.backend, self.made_by = formats, stream, pool.backend, pool.made_by
        self.loop = asyncio.get_running_loop()
        self.bars: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # ("bar", text) ... ("done", "")
        self.finished = asyncio.Event()
        self.start = time.perf_counter()
        self._first_bar = False
        self._last_patch: float | None = None
        self._recorded = False
        self.continuation = continuation  # a user's piece this one continues
        text = continuation.text(prompt, config) if continuation else None
        self.handle = pool.submit(PieceRequest(prompt, config, text=text, tag=path), self._listen)

    def _listen(self, event: Event) -> None:
        """On the engine's thread: time the piece, pass bars (streams) and its end to the loop."""
        now = time.perf_counter()
        if event.kind == "patch":
            if self._last_patch is not None:
                self.metrics.inter_patch.observe(now - self._last_patch)
            self._last_patch = now
            return
        if event.kind == "bar" and not self._first_bar:
            self._first_bar = True
            self.metrics.first_bar.observe(now - self.start)
        try:
            if self.stream:
                self.loop.call_soon_threadsafe(self.bars.put_nowait, (event.kind, event.text))
            if event.kind == "done":
                self.loop.call_soon_threadsafe(self.finished.set)
        except RuntimeError:  # the loop has closed: the server is going down, nobody is listening
            pass

    def _record(self, outcome: str, why: str = "") -> None:
        """Count the request's outcome once, and log one line for its piece (the access log has a
        line per request, written when a stream's headers go out, before the piece is made)."""
        if not self._recorded:
            self._recorded = True
            elapsed = time.perf_counter() - self.start
            self.metrics.outcome(self.path, outcome, elapsed if outcome in ("complete", "stopped") else None)
            state = self.handle.state  # still running when its client left
            work = f"{state.piece.patches} patches in {state.seconds:.2f} s" if state is not None else "no row yet"
            LOG.info("piece %s seed %d: %s (%s), %s, %.2f s end to end", self.path, self.config.seed, outcome,
                     why or state.piece.stop_reason, work, elapsed)

    def cancel(self) -> None:
        """The client left: free the piece's row at the engine's next step."""
        if not self.handle.done:
            self.handle.cancel()
            self._record("cancelled", "the client left")

    async def wait(self, disconnected) -> bool:
        """Wait for the piece to end; False (and the piece cancelled) if ``disconnected()`` says
        the client left first."""
        while not self.finished.is_set():
            try:
                await asyncio.wait_for(self.finished.wait(), DISCONNECT_POLL)
            except asyncio.TimeoutError:
                if await disconnected():
                    self.cancel()
                    return False
        return True

    async def result(self) -> dict:
        """The response body of the ended piece (scores made off the event loop)."""
        piece, handle = self.handle.piece, self.handle
        if handle.error:
            self._record("error", handle.error)
            raise ApiError(500, f"the backend failed: {handle.error}", "error")
        if piece.stop_reason == "cancelled":  # the service is shutting down
            self._record("cancelled", "the service is shutting down")
            raise ApiError(503, "the service is shutting down; the piece was cancelled", "cancelled")
        abc = piece_abc(self.prompt, self.config, piece, self.made_by)
        if self.continuation is not None:  # the user's bars, a marker comment, the new bars
            abc = self.continuation.mark(abc)
        scores = [k for k in self.formats if k != "abc"]
        made, errors = await asyncio.to_thread(convert, abc, scores) if scores else ({}, {})
        if "midi" in made:
            made["midi"] = base64.b64encode(made["midi"]).decode("ascii")
        outputs = {kind: (abc if kind == "abc" else made.get(kind)) for kind in self.formats}
        self._record("complete" if piece.complete else "stopped")
        prompt = self.prompt
        return {"seed": self.config.seed, "prompt": prompt and prompt.as_dict(),
                "outputs": outputs, "errors": errors, "complete": piece.complete, "stop_reason": piece.stop_reason,
                "patches": piece.patches, "seconds": round(piece.seconds, 3), "backend": self.backend}

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: ``bar`` per closed bar, then ``done`` with the whole result (or
        ``error``). A client that leaves cancels the piece."""
        index = 0
        try:
            while True:
                kind, text = await self.bars.get()
                if kind == "bar":
                    yield sse("bar", {"index": index, "text": text})
                    index += 1
                elif kind == "done":
                    try:
                        yield sse("done", await self.result())
                    except ApiError as exc:
                        yield sse("error", {"error": exc.message})
                    return
        finally:  # also on a disconnect: the response task is cancelled here
            self.cancel()
