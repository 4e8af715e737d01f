"""The one interface between the engine and a backend: a fixed number of rows, batched.

An ``Executor`` holds ``rows`` slots, each with its own caches and position (the style of
Polygraphy's runners and onnxruntime-genai's generator: small, explicit, a context manager).
Per patch the engine calls ``sample`` once for every active row, then ``accept`` with the rows
whose patch joins their context; ``load`` (re)fills a row's context and ``free`` releases it.
An executor only computes: the published rules live in ``piece.PieceState``.

``StepExecutor`` is the shared default for backends whose sessions step one character at a
time (PyTorch reference, ONNX Runtime, TensorRT): one session per row, a patch sampled with
``StepSession.sample_patch``, which a session may override with a faster one-call version.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from notagen_trt.config import BOS_ID, PATCH_SIZE, ModelConfig

from . import codec
from .piece import PatchRequest
from .sampling import SamplingParams, sample


class Executor(abc.ABC):
    """``rows`` slots of decoding state on one backend (see the module doc)."""

    name: str
    config: ModelConfig
    rows: int

    @abc.abstractmethod
    def load(self, row: int, patches: np.ndarray) -> None:
        """Make ``patches`` [n, 16] the whole context of ``row`` (a new piece or a rebuild)."""

    @abc.abstractmethod
    def sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        """Sample one patch [16] for every row in ``requests`` (its forced prefix, then one
        character per uniform with its sampling settings). Rows not asked for are untouched."""

    @abc.abstractmethod
    def accept(self, rows: Sequence[int]) -> None:
        """The last sampled patch of each of ``rows`` joins that row's context; the other rows
        of the last ``sample`` drop theirs and sample again from the same state."""

    def free(self, row: int) -> None:
        """``row`` holds no piece any more (its state is overwritten by the next ``load``)."""

    def lanes(self) -> list["Executor"]:
        """This executor's rows as groups that compute at the same time when each is driven from
        a thread of its own, in row order (the first lane's rows first): the engine's threads step
        each lane on its own, none waiting for another's patch. One lane, this executor, unless a
        backend says otherwise."""
        return [self]

    def close(self) -> None:
        """Release device memory, streams and graphs."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StepSession(abc.ABC):
    """One row's decoding state on a backend that steps one character at a time."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the patch context (before loading another)."""

    @abc.abstractmethod
    def extend(self, patches: np.ndarray) -> np.ndarray:
        """Append patches [k, 16] to the context; return the last patch's hidden state [H]."""

    @abc.abstractmethod
    def char_start(self, hidden: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Start a patch: position 0 is ``hidden``, tokens[1:] the forced prefix (tokens[0] is
        the bos placeholder). Return the logits [128] for the next character."""

    @abc.abstractmethod
    def char_step(self, token: int) -> np.ndarray:
        """Append one character to the patch in progress; return the next logits [128]."""

    def sample_patch(self, hidden: np.ndarray, prefix: list[int], uniforms: np.ndarray,
                     params: SamplingParams) -> list[int]:
        """The patch: ``prefix``, then one character per uniform of ``uniforms[len(prefix):]``."""
        out = list(prefix)
        logits = self.char_start(hidden, [BOS_ID, *prefix])
        while True:
            out.append(int(sample(logits, uniforms[len(out)], params)))
            if len(out) == PATCH_SIZE:
                return out
            logits = self.char_step(out[-1])

    def close(self) -> None:
        """Release what the session holds beyond host memory."""


class StepExecutor(Executor):
    """Rows as independent ``StepSession``s (the shared default), stepped in turn, or ``workers``
    at a time on threads where the sessions release the GIL while they compute (ONNX Runtime on
    a CPU with one intra-op thread per call: each core runs a row)."""

    def __init__(self, name: str, config: ModelConfig, sessions: Sequence[StepSession], workers: int = 1) -> None:
        self.name, self.config, self.rows = name, config, len(sessions)
        self.sessions = list(sessions)
        self._hidden: list[np.ndarray | None] = [None] * self.rows
        self._sampled: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="notagen-row") if workers > 1 else None

    def _each(self, work: Callable[[int], object], rows: Iterable[int]) -> list:
        rows = list(rows)
        if self._pool is None or len(rows) < 2:
            return [work(row) for row in rows]
        return list(self._pool.map(work, rows))

    def load(self, row: int, patches: np.ndarray) -> None:
        session = self.sessions[row]
        session.reset()
        self._hidden[row] = session.extend(np.asarray(patches, dtype=np.int64))

    def sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        def one(row: int) -> np.ndarray:
            r = requests[row]
            return np.asarray(self.sessions[row].sample_patch(self._hidden[row], r.prefix, r.uniforms, r.params),
                              dtype=np.int64)

        self._sampled = dict(zip(requests, self._each(one, requests)))
        return dict(self._sampled)

    def accept(self, rows: Sequence[int]) -> None:
        def one(row: int) -> None:
            self._hidden[row] = self.sessions[row].extend(codec.clean_patch(self._sampled[row])[None])

        self._each(one, rows)

    def free(self, row: int) -> None:
        self._hidden[row] = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for session in self.sessions:
            session.close()


class SideBySide(Executor):
    """Rows split over ``parts``, executors that compute at the same time, each on a thread of
    its own: ONNX Runtime on a CPU runs one call on one core well, but a batched call's small ops
    do not spread over cores. Row ``r`` of this executor is a row of one part; a part with no
    row asked for sits a patch out (its pending accepts wait for its next call). The parts are
    its lanes: an engine's own threads step them apart (``sample`` here steps them together, for
    a caller that steps the engine itself)."""

    def __init__(self, name: str, parts: Sequence[Executor]) -> None:
        self.name, self.parts, self.config = name, list(parts), parts[0].config
        self.rows = sum(p.rows for p in self.parts)
        self._where = [(i, r) for i, part in enumerate(self.parts) for r in range(part.rows)]
        self._first = [sum(p.rows for p in self.parts[:i]) for i in range(len(self.parts))]
        self._pool = ThreadPoolExecutor(max(1, len(self.parts) - 1), thread_name_prefix="notagen-part")

    def load(self, row: int, patches: np.ndarray) -> None:
        part, r = self._where[row]
        self.parts[part].load(r, patches)

    def sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        split: dict[int, dict[int, PatchRequest]] = {}
        for row, request in requests.items():
            part, r = self._where[row]
            split.setdefault(part, {})[r] = request

        def one(part: int) -> dict[int, np.ndarray]:
            return {self._first[part] + r: tokens for r, tokens in self.parts[part].sample(split[part]).items()}

        if not split:
            return {}
        # The first part's call runs on this thread, the others on the pool's: one thread hand-off
        # a patch fewer (four demo rows on two cores: 0.77-0.95x the time of handing off both).
        first, *rest = split
        others = [self._pool.submit(one, part) for part in rest]
        try:
            out = one(first)
        finally:
            wait(others)  # no call still running when this returns or raises
        for future in others:
            out.update(future.result())
        return out

    def accept(self, rows: Sequence[int]) -> None:
        split: dict[int, list[int]] = {}
        for row in rows:
            part, r = self._where[row]
            split.setdefault(part, []).append(r)
        for part, rs in split.items():
            self.parts[part].accept(rs)

    def free(self, row: int) -> None:
        part, r = self._where[row]
        self.parts[part].free(r)

    def lanes(self) -> list[Executor]:
        return list(self.parts)

    def close(self) -> None:
        self._pool.shutdown()
        for part in self.parts:
            part.close()
