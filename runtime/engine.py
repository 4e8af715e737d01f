"""The generation engine: pieces flow through an executor's rows with in-flight batching.

The style of vLLM's ``EngineCore.step`` and TensorRT-LLM's in-flight batcher: each ``step``
admits waiting pieces into free rows, samples one patch for every active row in one executor
call, applies each piece's published rules (``PieceState.take``), and retires finished or
cancelled pieces, whose rows the next waiting pieces take before the next patch. A piece's
draws come from its own seeded rng, so its text does not depend on the number of rows, on the
other pieces or on when it arrived.

Front ends use it in one of two ways:
- ``run(requests)``: the calling thread steps until every request is done, yielding pieces as
  they finish (CLI, bench, eval). Requests are pulled lazily, only when a row is free, so
  memory does not grow with how many pieces are asked for.
- ``start()``: a background thread steps while there is work; other threads ``submit`` pieces
  and listen to their events (the HTTP service).

Lanes: an executor may split its rows into groups that compute at the same time from threads of
their own (``Executor.lanes``: ONNX Runtime on a CPU, a core each). ``run`` and ``start`` then
step each lane on its own thread, none waiting for another's patch (four demo rows on two cores
took 0.82x the time of stepping both lanes together, which waits for the slower call and hands
a call to the other core every patch); ``step`` still steps them together. ``run`` deals its
requests to the lanes in turn, so which pieces share a call, and with it a piece's numbers in
int8-wo, does not depend on thread timing. Listeners are called one at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from notagen_trt.errors import NotaGenError

from .executor import Executor
from .piece import BarSplitter, Decision, GenerationConfig, Piece, PieceState
from .prompts import Prompt
from .sampling import whole_number

MAX_ROWS = 64  # rows share one executor call; more than this buys nothing on any backend here


@dataclass(frozen=True)
class PieceRequest:
    prompt: Prompt | None = None
    config: GenerationConfig = field(default_factory=GenerationConfig)
    text: str | None = None  # continue this training-format text instead of starting from the prompt
    tag: Any = None  # the caller's own data (an index, a request id)

    def __post_init__(self) -> None:  # here, not on the engine's thread, where it would end other pieces
        if self.prompt is not None and not isinstance(self.prompt, Prompt):
            raise ValueError(f"prompt must be a Prompt (runtime.prompts.resolve_prompt) or None, got {self.prompt!r}")
        if not isinstance(self.config, GenerationConfig):
            raise ValueError(f"config must be a GenerationConfig, got {type(self.config).__name__}")
        if self.text is not None and not isinstance(self.text, str):
            raise ValueError(f"text must be a string or None, got {type(self.text).__name__}")
        start = self.text if self.text is not None else "".join(self.prompt.lines()) if self.prompt else ""
        if not start.isascii():
            bad = next(c for c in start if not c.isascii())
            raise ValueError(f"the {'text' if self.text is not None else 'prompt'} holds {bad!r}, which is not ASCII: "
                             "NotaGen's vocabulary is the 128 ASCII codes")


@dataclass(frozen=True)
class Event:
    kind: Literal["patch", "bar", "done"]
    handle: "PieceHandle"
    text: str = ""  # the added text (patch), one closed bar (bar), '' (done)


Listener = Callable[[Event], None]


class PieceHandle:
    """A submitted piece: its events go to ``listener`` (called on the engine's thread; keep it
    short; one that raises ends this piece as cancelled, ``error`` saying why, and no other),
    ``cancel`` frees its row at the next step, ``wait`` blocks until it ends (on a started
    engine; where the caller steps the engine itself, ``done`` says when)."""

    _ids = itertools.count()

    def __init__(self, request: PieceRequest, listener: Listener | None, engine: "Engine | None" = None) -> None:
        self.id = next(self._ids)
        self.request = request
        self.listener = listener
        self._engine = engine
        self.state: PieceState | None = None  # made when the piece takes a row
        self.error: str = ""  # set when the backend failed while this piece was running
        self._cancelled = False
        self._done = threading.Event()
        self._bars = BarSplitter()

    @property
    def piece(self) -> Piece | None:
        return self.state.piece if self.state else None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def _ended(self) -> bool:
        """The piece is whole (also inside its own done event, before ``done`` is set)."""
        return self.state is not None and self.state.done

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        """Cancel was asked for (the piece ends at the engine's next step)."""
        return self._cancelled

    def wait(self, timeout: float | None = None) -> Piece:
        """The finished piece; TimeoutError if it has not ended within ``timeout`` seconds (as a
        future's ``result``). On an engine nobody started, a RuntimeError at once: no thread would
        ever end it."""
        if self._engine is not None and threading.current_thread() in self._engine._stepping:  # a listener
            if self._ended:  # its own done event: the piece is whole
                return self.state.piece
            raise RuntimeError("wait() in a listener would hold up the engine it waits on; act on the done event")
        if not self._done.is_set() and self._engine is not None and not self._engine._threads:
            raise RuntimeError("wait() needs a started engine (engine.start()); an engine you step yourself "
                               "(engine.step(), engine.run()) ends the piece when handle.done says so")
        if not self._done.wait(timeout):
            raise TimeoutError(f"the piece has not ended within {timeout} s (it goes on; wait again, or cancel())")
        return self.state.piece

    def abc(self) -> str:
        """The finished piece's .abc, exactly as `generate` writes it and the service returns it
        (a settings comment naming the backend, the post-processed tune, a note if a limit cut it)."""
        from .render import piece_abc

        if not self._ended:
            raise RuntimeError("the piece has not ended (wait() for it)")
        made_by = self._engine.made_by if self._engine is not None else ""
        return piece_abc(self.request.prompt, self.request.config, self.state.piece, made_by)

    def save(self, out_dir: str | Path, formats: Iterable[str] = ("abc", "musicxml", "midi", "svg"),
             stem: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """Write the finished piece into ``out_dir`` as `generate` does: ({format: path} written,
        {format: why not} for a score that could not be made; needs the [music] extra). ``stem``:
        the file name without extension (default: generate's, from the prompt, seed and settings)."""
        from .outputs import FORMATS, write_piece
        from .render import piece_stem

        formats = tuple(formats)
        if unknown := sorted(set(formats) - set(FORMATS)):
            raise ValueError(f"unknown formats {unknown}; choose from {', '.join(FORMATS)}")
        abc = self.abc()
        c = self.request.config
        stem = stem or piece_stem(self.request.prompt, c.seed, c.bars, c.sampling, c.meter, c.key)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return write_piece(out_dir, stem, abc, formats)

    def _emit(self, kind: str, text: str = "") -> None:
        if self.listener is None:
            return
        # One listener call at a time, whichever of the engine's threads steps this piece.
        with self._engine._events if self._engine is not None else contextlib.nullcontext():
            try:
                self.listener(Event(kind, self, text))
            except Exception as exc:  # noqa: BLE001 - a listener's fault ends its own piece, not the others in flight
                self.listener = None
                self.error = f"the listener raised {type(exc).__name__}: {exc}"
                self._cancelled = self._cancelled or kind != "done"  # a piece that has ended stays as it ended

    def _added(self, text: str) -> None:
        if self.listener is None:  # nobody streams: skip the bar splitting
            return
        self._emit("patch", text)
        for bar in self._bars.feed(text):
            self._emit("bar", bar)

    def _finish(self) -> None:
        for bar in self._bars.flush():
            self._emit("bar", bar)
        self._emit("done")  # before wait() returns: a caller may rely on what its listener did
        self._done.set()


@dataclass
class EngineStats:
    steps: int = 0  # executor calls (one patch for every active row of a lane, or of every lane)
    patches: int = 0  # patches sampled, summed over rows
    finished: int = 0
    last_step_seconds: float = 0.0


@dataclass(frozen=True)
class _Lane:
    """Rows the executor computes together (``Executor.lanes``): engine rows ``rows``, which are the
    lane executor's rows from 0 in the same order."""

    index: int
    executor: Executor
    rows: range


def _lanes(executor: Executor) -> list[_Lane]:
    lanes, start = [], 0
    for i, part in enumerate(executor.lanes()):
        lanes.append(_Lane(i, part, range(start, start + part.rows)))
        start += part.rows
    if start != executor.rows:
        raise ValueError(f"{executor.name}: its lanes hold {start} rows, not its {executor.rows}")
    return lanes


class _Tape:
    """``run``'s requests dealt to the lanes in turn, request k to lane k % lanes, each pulled from
    the iterable when its lane has a row free for it (so at most lanes - 1 ahead of the rows). The
    pieces that share a lane's calls, and so each piece's numbers, do not depend on which thread
    runs first; handles are made in request order, so their ids follow it."""

    def __init__(self, requests: Iterable[PieceRequest], lanes: int,
                 make: Callable[[PieceRequest], "PieceHandle"]) -> None:
        self._requests, self._lanes, self._make = iter(requests), lanes, make
        self._lock = threading.Lock()
        self._pulled: dict[int, PieceHandle] = {}  # pulled, not yet taken by their lane
        self._count = 0  # requests pulled
        self._next = list(range(lanes))  # each lane's next request
        self._end = False

    def take(self, lane: int) -> "PieceHandle | None":
        with self._lock:
            k = self._next[lane]
            while self._count <= k and not self._end:
                request = next(self._requests, None)
                if request is None:
                    self._end = True
                else:
                    self._pulled[self._count] = self._make(request)
                    self._count += 1
            handle = self._pulled.pop(k, None)
            if handle is not None:
                self._next[lane] += self._lanes
            return handle

    def done(self, lane: int) -> bool:
        """No request is left for ``lane``."""
        with self._lock:
            return self._end and self._next[lane] >= self._count

    def untaken(self) -> list["PieceHandle"]:
        with self._lock:
            return list(self._pulled.values())


class Engine:
    """In-flight batching over one executor (see the module doc)."""

    def __init__(self, executor: Executor, patch_length: int | None = None) -> None:
        self.executor = executor
        # The loop's PATCH_LENGTH: the model's, or less (tests use less to exercise halving).
        self.patch_length = min(patch_length or executor.config.patch_length, executor.config.patch_length)
        self.stats = EngineStats()
        # After each step: (seconds, rows stepped, rows of the lane stepped; all rows for step()).
        self.on_step: list[Callable[[float, int, int], None]] = []
        self._rows: list[PieceHandle | None] = [None] * executor.rows
        self._lanes = _lanes(executor)
        self._whole = _Lane(-1, executor, range(executor.rows))  # step(): every lane in one call
        self._waiting: deque[PieceHandle] = deque()
        self._work = threading.Condition()
        self._threads: list[threading.Thread] = []  # the threads stepping the lanes (start(), or a run() of lanes)
        self._lane_run = False  # a run() of lanes is under way
        self._live = 0  # start()'s lane threads still running
        self._closed = False
        self._stepping: set[threading.Thread] = set()  # the threads inside a step
        self._events = threading.RLock()  # listeners are called one at a time, whichever lane steps
        self._counting = threading.Lock()  # stats, from every lane
        self._shut_down_here = False  # close() came from a listener: the steps finish it
        self._shutting = threading.RLock()  # held to the end: a second close() returns once the first is done
        self._is_shut = False  # pieces ended and the executor closed (once)
        self.note = executor.name  # which backend runs it, and why (set by load_engine)
        # What made its pieces, for the line that opens each .abc: the backend, and (set by
        # load_engine) the model and its precision.
        self.made_by = executor.name

    # ---- submitting ---------------------------------------------------------------------------
    def submit(self, request: PieceRequest, listener: Listener | None = None) -> PieceHandle:
        """Queue a piece; it takes a row at the next step with one free (thread-safe)."""
        handle = PieceHandle(request, listener, self)
        with self._work:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(handle)
            self._work.notify_all()  # every lane: whichever has a free row takes it
        return handle

    @property
    def active(self) -> int:
        return sum(h is not None for h in self._rows)

    @property
    def lane_rows(self) -> list[int]:
        """The rows of each lane (``Executor.lanes``); one lane holds them all on most backends."""
        return [len(lane.rows) for lane in self._lanes]

    @property
    def queued(self) -> int:
        """Pieces waiting for a row (one cancelled while waiting no longer counts: a service's
        queue limit and readiness must not fill with pieces whose clients have left)."""
        with self._work:
            return sum(not h._cancelled for h in self._waiting)

    # ---- stepping -----------------------------------------------------------------------------
    def step(self) -> list[PieceHandle]:
        """Admit, sample one patch for every active row (every lane in the one call), apply the
        rules, retire. Returns the pieces that ended in this step."""
        if self._closed and threading.current_thread() not in self._threads:  # (its own may finish a step)
            raise RuntimeError("the engine is closed")
        if self._lane_run:  # its lanes' threads are stepping these rows
            raise RuntimeError("a run() of lanes is stepping this engine; take its pieces from that run")
        try:
            return self._step_lane(self._whole, self._from_queue)
        finally:
            if self._shut_down_here and not self._threads:  # a listener closed the engine during this step
                self._shut_down()

    def _step_lane(self, lane: _Lane, source: Callable[[_Lane], PieceHandle | None]) -> list[PieceHandle]:
        return self._as_stepping(self._step, lane, source)

    def _as_stepping(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work`` as a step: listeners it calls may close() the engine or wait() for their piece."""
        me = threading.current_thread()
        self._stepping.add(me)
        try:
            return work(*args)
        finally:
            self._stepping.discard(me)

    def _step(self, lane: _Lane, source: Callable[[_Lane], PieceHandle | None]) -> list[PieceHandle]:
        finished = self._retire_cancelled(lane) + self._admit(lane, source)
        running = {row: h for row in lane.rows if (h := self._rows[row]) is not None}
        if not running:
            return finished
        start = time.perf_counter()
        base = lane.rows.start  # engine row -> the lane executor's row
        patches = lane.executor.sample({row - base: h.state.request() for row, h in running.items()})
        accept, reload = [], []
        for row, handle in running.items():
            state = handle.state
            before = len(state.piece.text)
            decision = state.take(patches[row - base])
            if len(state.piece.text) > before:
                handle._added(state.piece.text[before:])
            elif len(state.piece.text) < before:  # an open bar taken back (a forced meter)
                handle._bars.take_back(before - len(state.piece.text))
            if decision is Decision.ACCEPT:
                accept.append(row - base)
            elif decision is Decision.RELOAD:
                reload.append(row)
            elif decision is Decision.STOP:
                finished.append(self._retire(lane, row))
        lane.executor.accept(accept)
        for row in reload:  # after the accepted patches are in place
            handle = self._rows[row]
            context = handle.state.context()
            if handle.state.done:
                finished.append(self._retire(lane, row))
            else:
                lane.executor.load(row - base, context)
        seconds = time.perf_counter() - start
        with self._counting:
            self.stats.steps += 1
            self.stats.patches += len(running)
            self.stats.last_step_seconds = seconds
        for observer in self.on_step:
            observer(seconds, len(running), len(lane.rows))
        return finished

    def _from_queue(self, lane: _Lane) -> PieceHandle | None:
        with self._work:
            return self._waiting.popleft() if self._waiting else None

    def _admit(self, lane: _Lane, source: Callable[[_Lane], PieceHandle | None]) -> list[PieceHandle]:
        """The lane's free rows take pieces from ``source`` (the queue: oldest first); returns
        pieces that ended on admission."""
        ended = []
        for row in lane.rows:
            while self._rows[row] is None:
                handle = source(lane)
                if handle is None:
                    return ended
                request = handle.request
                handle.state = PieceState(request.prompt, request.config, self.patch_length, request.text)
                if handle._cancelled:
                    handle.state.stop("cancelled")
                    ended.append(self._end(handle))
                    continue
                try:
                    context = handle.state.context()
                except ValueError as exc:  # this request's own text (PieceRequest checks it first): it alone ends
                    handle.error = str(exc)
                    handle.state.stop("error")
                    ended.append(self._end(handle))
                    continue
                if handle.state.done:  # the text given does not fit even halved
                    ended.append(self._end(handle))
                    continue
                try:
                    lane.executor.load(row - lane.rows.start, context)
                except Exception as exc:
                    handle.error = f"{type(exc).__name__}: {exc}"
                    handle.state.stop("error")
                    self._end(handle)
                    raise
                self._rows[row] = handle
        return ended

    def _retire_cancelled(self, lane: _Lane) -> list[PieceHandle]:
        """Cancelled pieces end now: those in the lane's rows (freed) and those still waiting for one."""
        out = []
        for row in lane.rows:
            handle = self._rows[row]
            if handle is not None and handle._cancelled:
                handle.state.stop("cancelled")
                out.append(self._retire(lane, row))
        with self._work:
            left = [h for h in self._waiting if h._cancelled]
            if left:
                self._waiting = deque(h for h in self._waiting if not h._cancelled)
        return out + [self._cancel_unstarted(handle) for handle in left]

    def _retire(self, lane: _Lane, row: int) -> PieceHandle:
        handle = self._rows[row]
        self._rows[row] = None
        try:
            lane.executor.free(row - lane.rows.start)
        finally:  # a backend that fails to free still lets the piece end (its fault is raised)
            self._end(handle)
        return handle

    def _end(self, handle: PieceHandle) -> PieceHandle:
        with self._counting:
            self.stats.finished += 1
        handle._finish()
        return handle

    def _end_running(self, lane: _Lane, error: str | None = None) -> None:
        """Every running piece of the lane ends, with ``error`` (the backend failed) or cancelled
        (the engine closes); its rows are freed, or the pieces end anyway where the backend fails to."""
        for row in lane.rows:
            handle = self._rows[row]
            if handle is not None:
                if error is None:
                    handle._cancelled = True
                else:
                    handle.error = error
                handle.state.stop("cancelled" if error is None else "error")
                with contextlib.suppress(Exception):  # a faulted backend may fail to free too; the piece has ended
                    self._retire(lane, row)

    # ---- the calling thread steps -------------------------------------------------------------
    def run(self, requests: Iterable[PieceRequest], listener: Listener | None = None) -> Iterator[PieceHandle]:
        """Generate every request, yielding each piece as it ends. Requests are taken from the
        iterable only when a row is free for them. An executor of several lanes (ONNX Runtime on
        a CPU, a core each) has each lane stepped on a thread of its own meanwhile, request k
        going to lane k % lanes, so the pieces are the same on every run; the iterable is then
        advanced on the lanes' threads, so give a list or one that never blocks (requests that
        arrive over time: ``start`` and ``submit``)."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        if self._lane_run:
            raise RuntimeError("another run() is stepping this engine; finish or close that one first")
        if self._threads:
            raise RuntimeError("this engine steps on its own thread (start()): submit() pieces and wait() on them")
        if len(self._lanes) > 1:
            yield from self._run_lanes(requests, listener)
            return
        pending = iter(requests)
        exhausted = False
        while True:
            while not exhausted and self.active + self.queued < len(self._rows):
                request = next(pending, None)
                if request is None:
                    exhausted = True
                else:
                    self.submit(request, listener)
            if self._closed or (exhausted and not self.active and not self.queued):
                return
            yield from self.step()

    def _run_lanes(self, requests: Iterable[PieceRequest], listener: Listener | None) -> Iterator[PieceHandle]:
        """run() with a thread per lane: pieces come back here as they end, at most a few ahead of
        the caller (a lane waits while the caller is busy with the ones before), and a lane's
        fault is raised here once every lane has stopped (with the faults of other lanes, if any,
        as notes on it). The iterable is advanced on the lanes'
        threads, one request at a time."""
        tape = _Tape(requests, len(self._lanes), lambda request: PieceHandle(request, listener, self))
        ended: queue.SimpleQueue[PieceHandle | None] = queue.SimpleQueue()  # None: a lane is over
        room = threading.Semaphore(len(self._rows))  # ended pieces the caller may be behind by
        faults: list[BaseException] = []
        stop = threading.Event()  # the lanes stop stepping: a lane failed, or the caller stopped listening
        gone = threading.Event()  # the caller stopped listening

        def hand_over(handle: PieceHandle) -> None:
            while not gone.is_set() and not self._closed:  # close() from elsewhere joins this thread
                if room.acquire(timeout=0.05):
                    ended.put(handle)
                    return

        def take(lane: _Lane) -> PieceHandle | None:
            # Pieces already queued first (submitted, or left by a run stopped early), then the tape's.
            return self._from_queue(lane) or tape.take(lane.index)

        def drive(lane: _Lane) -> None:
            try:
                while not stop.is_set() and not self._closed:
                    for handle in self._step_lane(lane, take):
                        hand_over(handle)
                    if tape.done(lane.index) and all(self._rows[row] is None for row in lane.rows) and not self.queued:
                        break
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                faults.append(exc)
                stop.set()
            finally:
                ended.put(None)

        threads = [threading.Thread(target=drive, args=(lane,), name=f"notagen-lane-{lane.index}", daemon=True)
                   for lane in self._lanes]
        with self._work:  # one run of lanes, and no start(), at a time
            if self._lane_run or self._threads:
                raise RuntimeError("another run() or start() is stepping this engine; finish or close it first")
            self._lane_run, self._threads = True, threads
        try:
            for thread in threads:
                thread.start()
            live = len(threads)
            while live:
                handle = ended.get()
                if handle is None:
                    live -= 1
                else:
                    room.release()
                    yield handle
        finally:
            gone.set()
            stop.set()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            untaken = tape.untaken()
            with self._work:  # against a close() from elsewhere: before it, they wait; after it, they end
                self._threads, self._lane_run = [], False
                if not self._closed:  # the caller stopped early or a lane failed: they wait, as submitted pieces do
                    self._waiting.extendleft(reversed(untaken))
                    untaken = []
            for handle in untaken:  # pieces pulled for a lane that never took them end as queued ones do
                self._cancel_unstarted(handle)
            if self._shut_down_here:  # a listener closed the engine
                self._shut_down()
        if faults:
            for other in faults[1:]:  # one is raised; the other lanes' faults are told on it, not lost
                if hasattr(faults[0], "add_note"):  # Python 3.11+
                    faults[0].add_note(f"another lane failed too: {type(other).__name__}: {other}")
            raise faults[0]

    def generate(self, requests: Iterable[PieceRequest], listener: Listener | None = None) -> list[Piece]:
        """Every request's piece, in request order (pieces submitted before, which the run also
        ends, are not among them)."""
        requests = list(requests)
        mine = {id(request) for request in requests}
        handles = sorted((h for h in self.run(requests, listener) if id(h.request) in mine), key=lambda h: h.id)
        return [h.piece for h in handles]

    # ---- background threads step --------------------------------------------------------------
    def start(self) -> "Engine":
        """Step on background threads while there is work (for services): one per lane, each
        taking waiting pieces into its free rows."""
        with self._work:
            if self._lane_run:
                raise RuntimeError("a run() is stepping this engine; start() it once that run has finished")
            if self._threads:
                return self
            self._live = len(self._lanes)
            name = "notagen-engine"
            threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                        name=name if len(self._lanes) == 1 else f"{name}-{lane.index}")
                       for lane in self._lanes]
            self._threads = threads
        for thread in threads:
            thread.start()
        return self

    def _loop(self, lane: _Lane) -> None:
        try:
            while True:
                with self._work:
                    while not self._closed and not self._waiting and all(self._rows[r] is None for r in lane.rows):
                        self._work.wait()
                    if self._closed:
                        break
                try:
                    self._step_lane(lane, self._from_queue)
                except Exception as exc:  # noqa: BLE001 - a backend fault must not stop the service
                    self._as_stepping(self._end_running, lane, f"{type(exc).__name__}: {exc}")
        finally:
            with self._work:
                self._live -= 1
                last = self._live == 0
            if last and self._shut_down_here:  # a listener closed the engine: the last lane out finishes it
                self._shut_down()

    def close(self) -> None:
        """Stop the background threads, end queued and running pieces as cancelled, close the executor.
        From a listener (an engine thread) the same happens once the steps under way are over."""
        with self._work:
            self._closed = True
            self._work.notify_all()
        me = threading.current_thread()
        if me in self._stepping or me in self._threads:  # a listener: the steps under way end first
            self._shut_down_here = True
            return
        for thread in list(self._threads):
            thread.join()
        self._shut_down()

    def _cancel_unstarted(self, handle: PieceHandle) -> PieceHandle:
        handle.state = handle.state or PieceState(handle.request.prompt, handle.request.config, self.patch_length,
                                                  handle.request.text)
        handle._cancelled = True
        handle.state.stop("cancelled")
        return self._end(handle)

    def _shut_down(self) -> None:
        with self._shutting:
            if self._is_shut:
                return
            self._is_shut = True
            with self._work:
                waiting, self._waiting = list(self._waiting), deque()
            for handle in waiting:
                self._cancel_unstarted(handle)
            self._end_running(self._whole)
            self.executor.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate(executor: Executor, prompt: Prompt | None = None, config: GenerationConfig = GenerationConfig(),
             patch_length: int | None = None, text: str | None = None) -> Piece:
    """One whole piece on row 0 of ``executor`` (the executor stays open)."""
    engine = Engine(executor, patch_length)
    return engine.generate([PieceRequest(prompt, config, text)])[0]


def model_label(model: str | Path | None) -> str:
    """The model's name in a piece's first line, the same however the path is spelt: its folder's
    name (of a graph file, its folder's); a checkpoint, and its export in the user cache, by the
    checkpoint's name ("demo" for the demo model)."""
    from notagen_trt.demo import cached_export_name, checkpoint_name

    from .backends import CHECKPOINT_SUFFIXES

    if model is None:
        return "demo"
    path = Path(model).resolve()
    if path.is_file():
        if path.suffix in CHECKPOINT_SUFFIXES:
            return checkpoint_name(path)
        path = path.parent
    return cached_export_name(path) or path.name


def load_engine(model: str | Path | None = None, backend: str = "auto", precision: str | None = None,
                rows: int | None = None, threads: int | str | None = None, device: str | None = None,
                pieces: int | None = None, at_least: int = 1) -> Engine:
    """The library entry point: a model directory or checkpoint (default: the demo model) on the
    fastest backend that runs here (or the one named), as an engine with ``rows`` rows (default:
    what suits the backend, no more than ``pieces`` when the caller knows it will ask for no more:
    a batched row without a piece still costs its share of each call; no fewer than ``at_least``:
    a service keeps a few clients going on a backend that steps its rows one after another).
    ``engine.note`` says which
    backend was chosen and why. ``device`` (e.g. ``cuda:1``) places the fast CUDA path on one GPU
    (a service runs one engine per GPU)."""
    from notagen_trt.demo import demo_model_dir

    from .backends import select_backend

    if threads is None:
        # ONNX Runtime CPU: one intra-op thread per call and the rows side by side, a core each,
        # or, where the model's ops are big enough to split, every row in one call on every core
        # (onnx_backend.AUTO). Intra-op threads that spin for work made a demo patch 4x
        # slower on a busy 2-core machine, and a demo patch's ops are too small to split.
        from .onnx_backend import AUTO

        threads = AUTO
    chosen, note = select_backend(model if model is not None else demo_model_dir(), backend, precision, threads,
                                  device)
    if rows is not None:
        rows = whole_number("rows", rows)
    if rows is not None and not 1 <= rows <= MAX_ROWS:  # 0 too: not taken for "the default"
        raise ValueError(f"rows must be in 1..{MAX_ROWS}, got {rows}")
    wished = None  # the default rows, when at_least asked more (the fast path's default measures free memory)
    if rows is None:
        default = chosen.default_rows
        rows = max(at_least, min(default, pieces or MAX_ROWS))
        wished = default if rows > default else None
    try:
        executor = chosen.executor(rows)
    except NotaGenError:
        if wished is None:
            raise
        # at_least is a wish; the fast path's default is what the GPU's free memory holds: take that.
        note += f"; {rows} rows asked, {wished} fit"
        rows, executor = wished, chosen.executor(wished)
    engine = Engine(executor)
    engine.note = f"{engine.executor.name}, {rows} row{'s' * (rows > 1)}: {note}"
    precision = getattr(chosen, "precision", None) or getattr(chosen, "manifest", {}).get("precision", "fp32")
    engine.made_by = f"{engine.executor.name} ({model_label(model)}, {precision})"
    return engine
