"""The published NotaGen generation loop over any backend session.

Per patch: the patch decoder's last hidden state starts the char decoder, which samples 16
characters (fewer when a prefix is forced). The first body patch is regenerated with the forced
prefix ``[r:0/`` (or ``[r:0/N]`` for a chosen length); the EOS patch ends the piece; a full
context is rebuilt from the header and the last half of the body lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from notagen_trt.config import BOS_ID, PATCH_SIZE

from . import codec
from .prompts import Prompt
from .sampling import SamplingParams, sample
from .session import Backend, DecoderSession


@dataclass(frozen=True)
class GenerationConfig:
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_chars: int = 102_400  # published safety limit
    max_seconds: float = 600.0
    max_patches: int | None = None
    bars: int | None = None  # force ``[r:0/N]``: N more lines (bars) after the first

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_chars <= 0 or self.max_seconds <= 0:
            raise ValueError("max_chars and max_seconds must be positive")
        if self.max_patches is not None and self.max_patches <= 0:
            raise ValueError(f"max_patches must be positive, got {self.max_patches}")
        if self.bars is not None and self.bars < 0:
            raise ValueError(f"bars must be >= 0, got {self.bars}")

    def forced_body_prefix(self) -> str:
        return "[r:0/" if self.bars is None else f"[r:0/{self.bars}]"


@dataclass
class Piece:
    text: str  # everything generated, prompt lines included, in training format
    patches: int = 0
    stop_reason: str = ""  # eos | max_chars | max_seconds | max_patches | context_full
    seconds: float = 0.0
    rebuilds: int = 0

    @property
    def complete(self) -> bool:
        return self.stop_reason == "eos"


def limit_reached(piece: Piece, config: GenerationConfig, started: float) -> str:
    """The stop reason of the first limit a piece has reached after a patch, or ''."""
    if len(piece.text) > config.max_chars:
        return "max_chars"
    if time.perf_counter() - started > config.max_seconds:
        return "max_seconds"
    if config.max_patches is not None and piece.patches >= config.max_patches:
        return "max_patches"
    return ""


def halved_context(text: str) -> str | None:
    """The published context rebuild: the header plus the last half of the body lines (the
    last bar left open), or None when there is no body to halve."""
    header, body = codec.split_lines(text)
    keep = len(body) // 2
    return "".join(header + body[-keep:]) if keep else None


def sample_patch(session: DecoderSession, hidden: np.ndarray, prefix: list[int], rng: np.random.Generator,
                 params: SamplingParams) -> list[int]:
    """One patch: the forced ``prefix``, then characters sampled up to 16, one uniform each.
    A session with ``sample_patch`` does it in one call; others step character by character."""
    tokens = [BOS_ID, *prefix]
    one_call = getattr(session, "sample_patch", None)
    if one_call is not None:
        # rng.random(n) gives the same numbers as n successive rng.random() calls.
        return [*prefix, *one_call(hidden, tokens, rng.random(PATCH_SIZE - len(prefix)), params)]
    logits = session.char_start(hidden, tokens)
    out = list(prefix)
    while True:
        out.append(int(sample(logits, rng.random(), params)))
        if len(out) == PATCH_SIZE:
            return out
        logits = session.char_step(out[-1])


class PieceGenerator:
    """Steps one piece patch by patch; iterate it to stream the generated text."""

    def __init__(self, session: DecoderSession, patch_length: int, prompt: Prompt | None = None,
                 config: GenerationConfig = GenerationConfig()) -> None:
        self.session = session
        self.patch_length = patch_length
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.piece = Piece(text="".join(prompt.lines()) if prompt else "")
        self._in_body = False
        self._start = time.perf_counter()
        self._load_context(self.piece.text)

    def _load_context(self, text: str) -> None:
        patches, self._prefix = codec.encode_generate(text)
        self.session.reset()
        self._context = len(patches)
        self._hidden = self.session.extend(patches)

    def _sample_patch(self, prefix: list[int]) -> list[int]:
        return sample_patch(self.session, self._hidden, prefix, self.rng, self.config.sampling)

    @property
    def done(self) -> bool:
        return bool(self.piece.stop_reason)

    def step(self) -> str:
        """Generate one patch; return the text it added ('' when the piece ended)."""
        if self.done:
            return ""
        piece, cfg = self.piece, self.config
        prefix, self._prefix = self._prefix, []
        patch = self._sample_patch(prefix)
        if not self._in_body and codec.decode_patch(patch).startswith("[r:"):
            self._in_body = True
            patch = self._sample_patch(codec.to_ids(cfg.forced_body_prefix(), pad=False))
        piece.patches += 1
        if codec.is_eos_patch(patch):
            return self._stop("eos")
        added = codec.decode_patch(patch)[len(prefix) :]
        piece.text += added
        self._hidden = self.session.extend(codec.clean_patch(patch)[None])
        self._context += 1
        if reason := limit_reached(piece, cfg, self._start):
            self._stop(reason)
        elif self._context >= self.patch_length:
            self._rebuild()
        return added

    def _rebuild(self) -> None:
        """Context full: continue from the header plus the last half of the body lines."""
        text = halved_context(self.piece.text)
        if text is None:
            self._stop("context_full")
            return
        self._load_context(text)
        if self._context >= self.patch_length:
            self._stop("context_full")
        self.piece.rebuilds += 1

    def _stop(self, reason: str) -> str:
        self.piece.stop_reason = reason
        self.piece.seconds = time.perf_counter() - self._start
        return ""

    def __iter__(self) -> Iterator[str]:
        while not self.done:
            yield self.step()

    def bars(self) -> Iterator[str]:
        """Stream the piece bar by bar: each closed bar (or header line) once it is complete,
        and whatever is left when the piece ends."""
        pending = ""
        for added in self:
            pending += added
            lines = pending.splitlines(keepends=True)
            # Complete lines are done; of the open last line, every bar but the last is done.
            closed = [seg for line in lines[:-1] for seg in codec.split_bars(line)]
            if lines and lines[-1].endswith("\n"):
                closed += codec.split_bars(lines[-1])
                pending = ""
            elif lines:
                open_bars = codec.split_bars(lines[-1])
                closed += open_bars[:-1]
                pending = open_bars[-1]
            yield from closed
        if pending:
            yield pending

    def run(self) -> Piece:
        for _ in self:
            pass
        return self.piece


def generate(session: DecoderSession, patch_length: int, prompt: Prompt | None = None,
             config: GenerationConfig = GenerationConfig()) -> Piece:
    """Generate one whole piece."""
    return PieceGenerator(session, patch_length, prompt, config).run()


def generate_many(backend: Backend, patch_length: int, prompt: Prompt | None, configs: list[GenerationConfig],
                  workers: int = 1, on_patch: Callable[[int, str], None] | None = None,
                  on_piece: Callable[[int, Piece], None] | None = None) -> list[Piece]:
    """Several pieces through one loaded model, ``workers`` at a time (each piece stops on its
    own). Every piece has its own session and seed, so the result does not depend on
    ``workers``. ``on_patch(index, text)`` is called after every patch (progress display),
    ``on_piece(index, piece)`` as soon as a piece ends (so it can be saved at once)."""

    def one(i: int) -> Piece:
        session = backend.new_session()
        try:
            gen = PieceGenerator(session, patch_length, prompt, configs[i])
            for added in gen:
                if on_patch:
                    on_patch(i, added)
        finally:  # device-side sessions (TensorRT) hold streams and buffers
            getattr(session, "close", lambda: None)()
        if on_piece:
            on_piece(i, gen.piece)
        return gen.piece

    if workers <= 1:
        return [one(i) for i in range(len(configs))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(configs))))
