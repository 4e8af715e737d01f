"""The published generation rules for one piece, written once.

A ``PieceState`` owns everything the published loop decides for a piece: its seeded rng (one
uniform per drawn character), the forced body prefix ``[r:0/`` (or ``[r:0/N]`` for a chosen
length), the EOS patch, the character / patch / seconds limits, and halving a full context
(header plus the last half of the body lines, the last bar left open). It never computes a
model step: an executor samples the patch it asks for (``request``) and the state says what
happens to it (``take``). Every backend and every front end goes through this class.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

import numpy as np

from notagen_trt.config import PATCH_SIZE

from . import codec
from .prompts import Prompt
from .sampling import SamplingParams

MAX_SECONDS = 600.0


@dataclass(frozen=True)
class GenerationConfig:
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_chars: int = 102_400  # published safety limit
    max_seconds: float = MAX_SECONDS
    max_patches: int | None = None
    bars: int | None = None  # force ``[r:0/N]``: N more lines (bars) after the first

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_chars <= 0 or not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise ValueError(f"max_chars and max_seconds must be positive and finite, got {self.max_chars}, "
                             f"{self.max_seconds}")
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
    stop_reason: str = ""  # eos | max_chars | max_seconds | max_patches | context_full | cancelled
    seconds: float = 0.0
    rebuilds: int = 0

    @property
    def complete(self) -> bool:
        return self.stop_reason == "eos"


@dataclass(frozen=True)
class PatchRequest:
    """What an executor samples for one row: ``prefix`` forced at the start of the patch, then
    one character per uniform (``uniforms[len(prefix):]``; the rest are unused zeros)."""

    prefix: list[int]
    uniforms: np.ndarray  # [16] float64
    params: SamplingParams


class Decision(enum.Enum):
    ACCEPT = "accept"  # the patch joins the row's context
    RESAMPLE = "resample"  # drop it; sample again from the same context (forced body prefix)
    RELOAD = "reload"  # accepted, and the context is full: load ``state.context()`` into the row
    STOP = "stop"  # the piece ended (the patch may be part of the text, but the row is free)


class PieceState:
    """One piece under the published rules (see the module doc)."""

    def __init__(self, prompt: Prompt | None, config: GenerationConfig, patch_length: int,
                 text: str | None = None) -> None:
        self.config = config
        self.patch_length = patch_length
        self.rng = np.random.default_rng(config.seed)
        self.piece = Piece(text=text if text is not None else "".join(prompt.lines()) if prompt else "")
        self.in_body = False
        self._prefix: list[int] = []  # characters forced at the start of the next patch
        self._prefix_in_text = False  # True when they are an open bar already in the text
        self._context = 0
        self._context_text = self.piece.text  # what ``context`` loads next
        self._start = time.perf_counter()

    @property
    def done(self) -> bool:
        return bool(self.piece.stop_reason)

    def context(self) -> np.ndarray:
        """The patches [n, 16] to load into a row now: the whole text at the start, the halved
        text after a RELOAD. An open last bar becomes the next patch's forced prefix."""
        patches, self._prefix = codec.encode_generate(self._context_text)
        self._prefix_in_text = True
        self.in_body = self.in_body or bool(codec.split_lines(self._context_text)[1])
        self._context = len(patches)
        if self._context >= self.patch_length:  # even the halved text does not fit
            self.stop("context_full")
        return patches

    def request(self) -> PatchRequest:
        """The next patch's forced prefix and uniforms, drawn exactly as the one-piece loop draws
        them (``rng.random(n)`` equals n successive draws)."""
        uniforms = np.zeros(PATCH_SIZE)
        k = len(self._prefix)
        uniforms[k:] = self.rng.random(PATCH_SIZE - k)
        return PatchRequest(list(self._prefix), uniforms, self.config.sampling)

    def take(self, patch: np.ndarray) -> Decision:
        """Apply the published rules to the sampled patch [16] (forced prefix included)."""
        piece, cfg = self.piece, self.config
        already = len(self._prefix) if self._prefix_in_text else 0
        self._prefix, self._prefix_in_text = [], False
        if not self.in_body and codec.decode_patch(patch).startswith("[r:"):
            self.in_body = True  # the first body patch is sampled again with the forced prefix
            self._prefix = codec.to_ids(cfg.forced_body_prefix(), pad=False)
            return Decision.RESAMPLE
        piece.patches += 1
        if codec.is_eos_patch(patch):
            return self.stop("eos")
        piece.text += codec.decode_patch(patch)[already:]
        self._context += 1
        if len(piece.text) > cfg.max_chars:
            return self.stop("max_chars")
        if time.perf_counter() - self._start > cfg.max_seconds:
            return self.stop("max_seconds")
        if cfg.max_patches is not None and piece.patches >= cfg.max_patches:
            return self.stop("max_patches")
        if self._context >= self.patch_length:
            return self._rebuild()
        return Decision.ACCEPT

    def _rebuild(self) -> Decision:
        """Context full: continue from the header plus the last half of the body lines."""
        header, body = codec.split_lines(self.piece.text)
        keep = len(body) // 2
        if not keep:
            return self.stop("context_full")
        self._context_text = "".join(header + body[-keep:])
        self.piece.rebuilds += 1
        return Decision.RELOAD

    def stop(self, reason: str) -> Decision:
        if not self.piece.stop_reason:
            self.piece.stop_reason = reason
            self.piece.seconds = time.perf_counter() - self._start
        return Decision.STOP


class BarSplitter:
    """Turns a piece's added text into closed bars: each header line or voice bar once it is
    complete (``feed``), and whatever is left when the piece ends (``flush``)."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, added: str) -> list[str]:
        lines = (self._pending + added).splitlines(keepends=True)
        # Complete lines are done; of the open last line, every bar but the last is done.
        closed = [seg for line in lines[:-1] for seg in codec.split_bars(line)]
        self._pending = ""
        if lines and lines[-1].endswith("\n"):
            closed += codec.split_bars(lines[-1])
        elif lines:
            open_bars = codec.split_bars(lines[-1])
            closed += open_bars[:-1]
            self._pending = open_bars[-1]
        return closed

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []
