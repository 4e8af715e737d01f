"""The published generation rules for one piece, written once.

A ``PieceState`` owns everything the published loop decides for a piece: its seeded rng (one
uniform per drawn character), the forced body prefix ``[r:0/`` (or ``[r:0/N]`` for a chosen
length), the EOS patch, the character / patch / seconds limits, and halving a full context
(header plus the last half of the body lines, the last bar left open). Beyond the published
rules it can force the header's ``M:`` and ``K:`` lines (``GenerationConfig.meter`` / ``key``)
with the same forced-prefix mechanism. It never computes a model step: an executor samples the
patch it asks for (``request``) and the state says what happens to it (``take``). Every backend
and every front end goes through this class.
"""

from __future__ import annotations

import enum
import math
import re
import time
from fractions import Fraction
from dataclasses import dataclass, field

import numpy as np

from notagen_trt.config import EOS_ID, PATCH_SIZE

from . import codec
from .prompts import Prompt
from .sampling import SamplingParams, number, whole_number

MAX_SECONDS = 600.0
MAX_BAR_RETRIES = 32  # resamples of one voice's bar that disagrees with a forced meter or key, then it stands
_STREAM_COUNTS = re.compile(r"\[r:(\d+)/(\d+)\]")
_BAR_START = re.compile(r"^\s*(\|\]|\|\||:\||::|\|:|\[\||\|)\s*")
_UNIT = re.compile(r"(?m)^L:\s*(\d+/\d+)")
# ABC modes as the corpus spells them (xml2abc writes Dmin, Ador, ...); a major key has none.
MODES = {"": "", "maj": "", "major": "", "ion": "", "ionian": "", "m": "min", "min": "min", "minor": "min",
         "aeo": "min", "aeolian": "min", "dor": "dor", "dorian": "dor", "mix": "mix", "mixolydian": "mix",
         "lyd": "lyd", "lydian": "lyd", "phr": "phr", "phrygian": "phr"}
_KEY = re.compile(r"([A-Ga-g])([#b]?)\s*([A-Za-z]*)")
_INLINE_KEY = re.compile(r"\[K:\s*([^\]\s]*)")  # an inline key field's key (a clef may follow it)
# A key as ABC readers take it: a tonic A-G, #/b, a mode's first three letters or m; anything glued
# on after is a clef ('Gbass' is G flat major in bass clef to abc2xml). A value without a capital
# tonic ('bass', 'treble', 'none') names no key.
_KEY_FIELD = re.compile(r"([A-G])([#b]?)(maj|min|ion|aeo|dor|mix|lyd|phr|loc|m(?![a-z]))?", re.IGNORECASE)
# Sharps (negative: flats) of each major key's signature, and what a mode takes off its tonic's.
_MAJOR_SHARPS = {"F": -1, "C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5}
_MODE_SHARPS = {"": 0, "lyd": 1, "mix": -1, "dor": -2, "min": -3, "phr": -4, "loc": -5}  # by MODES' names
_METER = re.compile(r"(\d{1,2})/(\d{1,2})")


def normalize_meter(meter: str) -> str:
    """'3/4', 'C' or 'C|' as an ABC M: value; ValueError (one line) otherwise."""
    text = meter.strip()
    m = _METER.fullmatch(text)
    if text in ("C", "C|") or (m and 0 < int(m.group(1)) and int(m.group(2)) in (1, 2, 4, 8, 16, 32)):
        return text
    raise ValueError(f"meter must look like 3/4, 6/8, 2/2 or C (a count over 1, 2, 4, 8, 16 or 32), got {meter!r}")


def normalize_key(key: str) -> str:
    """'D', 'Dm', 'Bb', 'F#m', 'D dorian'... as the corpus spells K: (D, Dmin, Bb, F#min, Ddor);
    ValueError (one line) otherwise."""
    m = _KEY.fullmatch(key.strip())
    mode = m and MODES.get(m.group(3).lower())
    if m is None or mode is None:
        raise ValueError(f"key must be a tonic A-G with an optional # or b and a mode (m, min, dor, mix, lyd, phr), "
                         f"e.g. D, Dm, Bb, F#m, Ddor; got {key!r}")
    return m.group(1).upper() + m.group(2) + mode


@dataclass(frozen=True)
class GenerationConfig:
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_chars: int = 102_400  # published safety limit
    max_seconds: float = MAX_SECONDS
    max_patches: int | None = None
    bars: int | None = None  # force ``[r:0/N]``: N more lines (bars) after the first
    meter: str | None = None  # force the header's ``M:`` line (normalised: '3/4')
    key: str | None = None  # force the header's ``K:`` line (normalised as the corpus spells it: 'F#min')

    def __post_init__(self) -> None:
        for name in ("seed", "max_chars", "max_patches", "bars"):  # numpy's ints too; a float, a string or a bool, not
            value = getattr(self, name)
            if value is not None or name in ("seed", "max_chars"):
                object.__setattr__(self, name, whole_number(name, value))
        if not isinstance(self.sampling, SamplingParams):
            raise ValueError(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        number("max_seconds", self.max_seconds)
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_chars <= 0:
            raise ValueError(f"max_chars must be positive, got {self.max_chars}")
        if not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise ValueError(f"max_seconds must be positive and finite, got {self.max_seconds}")
        if self.max_patches is not None and self.max_patches <= 0:
            raise ValueError(f"max_patches must be positive, got {self.max_patches}")
        if self.bars is not None and self.bars < 0:
            raise ValueError(f"bars must be >= 0, got {self.bars}")
        for name in ("meter", "key"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string such as {'3/4' if name == 'meter' else 'Dm'} or None, "
                                 f"got {getattr(self, name)!r}")
        if self.meter is not None:
            object.__setattr__(self, "meter", normalize_meter(self.meter))
        if self.key is not None:
            object.__setattr__(self, "key", normalize_key(self.key))

    def forced_body_prefix(self) -> str:
        return "[r:0/" if self.bars is None else f"[r:0/{self.bars}]"

    def forced_header_lines(self) -> dict[str, str]:
        """{field: the whole line} for the header fields this piece fixes, in header order."""
        lines = {"M": self.meter, "K": self.key}
        return {name: f"{name}:{value}\n" for name, value in lines.items() if value is not None}


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


def key_signature(key: str) -> int | None:
    """Sharps (negative: flats) of a K: value's signature as ABC readers take it ('Amin' and 'C':
    0, 'D': 2, 'Gbass': -6); None for a value that names no key (a clef alone, 'none')."""
    m = _KEY_FIELD.match(key.strip())
    if m is None or not m.group(1).isupper():
        return None
    mode = (m.group(3) or "").lower()
    return _MAJOR_SHARPS[m.group(1)] + {"#": 7, "b": -7, "": 0}[m.group(2)] + _MODE_SHARPS[MODES.get(mode, mode)]


class Decision(enum.Enum):
    ACCEPT = "accept"  # the patch joins the row's context
    RESAMPLE = "resample"  # drop it; sample again from the same context (forced body prefix)
    RELOAD = "reload"  # the context changed (full and halved, or a bar taken back): load ``state.context()``
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
        self._header_seen: set[str] = set()  # forced header fields (M, K) already written
        self._bar_retries = 0  # resamples of the bar in progress (a forced meter or key)
        self._loaded = (0, "")  # (len(piece.text), the context text) when the row was last loaded
        self._full_patch = False  # the last body patch had 16 characters and no eos: its bar may go on
        self._closed_end = False  # the next ``context`` ends with a whole bar (one was taken back)
        self._context = 0
        self._context_text = self.piece.text  # what ``context`` loads next
        self._start = time.perf_counter()

    @property
    def done(self) -> bool:
        return bool(self.piece.stop_reason)

    @property
    def seconds(self) -> float:
        """How long the piece has run: its final time once it has ended."""
        return self.piece.seconds if self.done else time.perf_counter() - self._start

    def context(self) -> np.ndarray:
        """The patches [n, 16] to load into a row now: the whole text at the start, the halved
        text after a RELOAD. A text that does not fit (a long piece to continue, or a halved one
        still too long) is halved again, header kept, until it does. An open last bar becomes the
        next patch's forced prefix."""
        closed, self._closed_end = self._closed_end, False
        patches, self._prefix = codec.encode_generate(self._context_text, open_end=not closed)
        while len(patches) >= self.patch_length:
            header, body = codec.split_lines(self._context_text)
            if len(body) < 2:  # the header (and one line) alone fill the context
                self.stop("context_full")
                break
            self._context_text = "".join(header + body[-(len(body) // 2):])
            self.piece.rebuilds += 1
            patches, self._prefix = codec.encode_generate(self._context_text, open_end=not closed)
        self._prefix_in_text = True
        self.in_body = self.in_body or bool(codec.split_lines(self._context_text)[1])
        self._context = len(patches)
        self._loaded = (len(self.piece.text), self._context_text)  # both end with the same (open) text
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
        sampled_under = self._prefix, self._prefix_in_text
        self._prefix, self._prefix_in_text = [], False
        patch = patch.tolist() if isinstance(patch, np.ndarray) else list(patch)  # the engine runs this per row per patch
        text = codec.decode_patch(patch)
        forced = self._forced_header_line(text)
        if forced is not None:  # sampled again, as the whole wanted line and its eos
            self._prefix = codec.to_ids(forced, pad=False) + [EOS_ID]
            return Decision.RESAMPLE
        if not self.in_body and text.startswith("[r:"):
            self.in_body = True  # the first body patch is sampled again with the forced prefix
            self._prefix = codec.to_ids(cfg.forced_body_prefix(), pad=False)
            return Decision.RESAMPLE
        verdict = self._bar_rule(patch, text[already:], sampled_under)
        if verdict is not None:
            return verdict
        piece.patches += 1
        if codec.is_eos_patch(patch):
            return self.stop("eos")
        piece.text += text[already:]
        self._full_patch = self.in_body and EOS_ID not in patch
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

    def _forced_header_line(self, text: str) -> str | None:
        """The line to force instead of a sampled header patch: a wanted field's line when the
        patch is that field with another value, or when the header moves on (to K:, a V: line or
        the body) before the field was written. None: the patch stands."""
        wanted = self.config.forced_header_lines()
        if not wanted or self.in_body or not self.piece.text.endswith("\n") and self.piece.text:
            return None  # the patch continues a line (or the header is over): not a field's start
        later = {"M": ("K:", "V:", "[V:", "[r:"), "K": ("V:", "[V:", "[r:")}
        for name, line in wanted.items():
            if text.startswith(f"{name}:") and text != line:
                return line
            if name not in self._header_seen and text.startswith(later[name]):
                return line
        for name in wanted:
            if text.startswith(f"{name}:"):
                self._header_seen.add(name)
        return None

    def _bar_rule(self, patch: list[int], added: str, sampled_under: tuple[list[int], bool]) -> Decision | None:
        """A forced meter or key: a voice's bar that disagrees with it (``_off_bar``) is sampled
        again (when it is all in this patch) or taken back to where it started (RELOAD), at most
        MAX_BAR_RETRIES times, then it stands. None: the patch goes on to the published rules."""
        if not ((self.config.meter or self.config.key) and self.in_body) or codec.is_eos_patch(patch):
            return None
        text, start = self.piece.text, None
        if self._full_patch and (text.endswith("\n") or added.startswith(("|", ":", "[|"))):
            start = self._off_bar(text)  # the last patch ended a bar without an eos; this one starts the next
        if start is None and EOS_ID in patch:  # this patch closes a bar
            start = self._off_bar(text + added)
        # The row's context ends as the text does; it can give back as much as it holds of the body.
        context = self._loaded[1] + text[self._loaded[0]:]
        header = len("".join(codec.split_lines(context)[0]))
        if start is None or self._bar_retries >= MAX_BAR_RETRIES or len(context) - (len(text) - start) <= header:
            if EOS_ID in patch:
                self._bar_retries = 0  # the bar stands
            return None
        self._bar_retries += 1
        if start >= len(text):  # the bar is this patch: sample it again
            self._prefix, self._prefix_in_text = sampled_under
            return Decision.RESAMPLE
        self.piece.text = text[:start]
        self._context_text = context[: len(context) - (len(text) - start)]
        self._full_patch, self._closed_end = False, True
        return Decision.RELOAD

    def _off_bar(self, text: str) -> int | None:
        """Where the last voice bar of ``text`` starts, if it disagrees with the forced key or meter."""
        start = self._off_key(text) if self.config.key else None
        return start if start is not None or not self.config.meter else self._off_meter(text)

    def _off_key(self, text: str) -> int | None:
        """Where the last voice bar of ``text`` starts, if it is in the first body line and an
        inline key field there has another signature than the forced key. The corpus restates
        the key in each lower voice's first bar ([V:2][K:Bb] under K:Gmin, the same signature);
        a voice that names another key there contradicts the header. Later key changes stand."""
        line = text[text.rfind("\n", 0, len(text) - 1) + 1:]
        counts = _STREAM_COUNTS.match(line)
        if not counts or counts.group(1) != "0":
            return None
        segment = codec.split_bars(line)[-1]
        want = key_signature(self.config.key)
        signatures = (key_signature(value) for value in _INLINE_KEY.findall(segment))
        return len(text) - len(segment) if any(s is not None and s != want for s in signatures) else None

    def _off_meter(self, text: str) -> int | None:
        """Where the last voice bar of ``text`` starts, if its length disagrees with the forced
        meter; None when it agrees or is not judged. As ``evaluate.bars_match_meter`` judges a
        piece, the first and last lines (pickups, endings) are not, nor alternate endings or
        anything after an inline M: / L: change."""
        if "[M:" in text or "[L:" in text:
            return None
        line_start = text.rfind("\n", 0, len(text) - 1) + 1
        line = text[line_start:]
        counts = _STREAM_COUNTS.match(line)
        if not line.strip() or counts and "0" in counts.groups():
            return None
        segment = codec.split_bars(line)[-1]
        notes = codec.NOT_NOTES.sub("", segment)
        barline = _BAR_START.match(notes)
        notes = notes[barline.end():] if barline else notes
        start = len(text) - len(segment)
        if not any(c.isalpha() for c in notes):  # a barline alone: an empty bar (x::|), or the line's tail
            return start if any(c in notes for c in "|:") else None
        if notes[:1].isdigit():  # an alternate ending (|1, :|2) may be short
            return None
        unit = _UNIT.findall(text[:line_start])
        duration = _bar_duration(notes)
        want = _meter_units(self.config.meter, unit[-1] if unit else "1/8")
        return None if duration == want else start

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
    complete (``feed``), and whatever is left when the piece ends (``flush``). Whether a line is
    a header line (one event, barlines and all: ``%%score { 1 | 2 }``) or a body line (split into
    bars) is read from its start, so the open line is kept whole with how much of it went out."""

    def __init__(self) -> None:
        self._line = ""  # the open (last, unfinished) line
        self._sent = 0  # characters of it already sent as closed bars

    def feed(self, added: str) -> list[str]:
        lines = (self._line + added).splitlines(keepends=True)
        skip, closed = self._sent, []
        self._line, self._sent = "", 0
        for line in lines:
            bars = self._bars(line)
            if not line.endswith("\n"):  # the open last line: every bar but its last is done
                bars = bars[:-1]
                self._line, self._sent = line, sum(map(len, bars))
            for bar in bars:
                if skip < len(bar):
                    closed.append(bar[skip:])
                skip = max(0, skip - len(bar))
        return closed

    def flush(self) -> list[str]:
        rest = self._line[self._sent :]
        self._line, self._sent = "", 0
        return [rest] if rest else []

    def take_back(self, n: int) -> None:
        """The last ``n`` characters were taken back (a bar off a forced meter): they were all in
        the open bar, which no event has shown yet."""
        self._line = self._line[: max(self._sent, len(self._line) - n)]

    @staticmethod
    def _bars(line: str) -> list[str]:
        """A body line's bars; a header line (``%%score { 1 | 2 }`` too) is one, as the codec takes it."""
        return codec.split_bars(line) if codec.is_body_line(line) else [line]


def _meter_units(meter: str, unit: str) -> Fraction:
    """A bar's length in units of L (``M:3/4`` with ``L:1/8`` -> 6)."""
    value = {"C": "4/4", "C|": "2/2"}.get(meter, meter)
    return Fraction(value) / Fraction(unit)


def _bar_duration(notes: str) -> Fraction | None:
    """A voice's bar length in units of L by the authors' bar arithmetic (abctoolkit, the
    ``music`` extra), as post-processing and evaluation measure it; None when it cannot tell."""
    from .postprocess import _bar_duration as duration

    return duration(notes)
