"""The 112 period / composer / instrumentation prompts NotaGen-X was fine-tuned on."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from notagen_trt.errors import NotaGenError


@dataclass(frozen=True)
class Prompt:
    period: str
    composer: str
    instrumentation: str

    def lines(self) -> list[str]:
        """The three conditioning lines that open a generated piece."""
        return [f"%{self.period}\n", f"%{self.composer}\n", f"%{self.instrumentation}\n"]

    def as_dict(self) -> dict[str, str]:
        """As the API, `generate --json` and `prompts --json` give it."""
        return {"period": self.period, "composer": self.composer, "instrumentation": self.instrumentation}


@lru_cache(maxsize=1)
def valid_prompts() -> tuple[Prompt, ...]:
    text = resources.files("notagen_trt").joinpath("data/prompts.txt").read_text(encoding="utf-8")
    return tuple(Prompt(*line.split("_")) for line in text.splitlines() if line.strip())


def _fold(value: str, allowed: list[str] | set[str]) -> str:
    """``value`` as spelled in the list when it differs only in case or spacing, else unchanged."""
    key = " ".join(value.split()).casefold()
    return next((a for a in allowed if a.casefold() == key), value)


def _canonical(kind: str, value: str, allowed: list[str]) -> str:
    value = _fold(value, allowed)
    if value in allowed:
        return value
    # A part of a name ("chopin"), else a near spelling, in any case; names hold commas, so quoted.
    key = " ".join(value.split()).casefold()
    folded = {a.casefold(): a for a in allowed}
    close = [a for a in allowed if len(key) >= 3 and key in a.casefold()][:3] or \
        [folded[c] for c in difflib.get_close_matches(key, list(folded), n=3, cutoff=0.5)]
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else f"valid: {', '.join(repr(a) for a in allowed)}")
    raise NotaGenError(f"unknown {kind} {value!r}: {hint} (`notagen-trt prompts` lists them all)")


def resolve_prompt(period: str | None, composer: str | None, instrumentation: str | None) -> Prompt | None:
    """A valid Prompt, or None for unconditional generation (all three omitted). Values are
    matched ignoring case and repeated spaces ("baroque", "bach,  johann sebastian")."""
    given = (period, composer, instrumentation)
    if all(v is None for v in given):
        return None
    if any(v is None for v in given):
        raise NotaGenError("give all three of --period, --composer and --instrumentation, or none of them")
    if not all(isinstance(v, str) for v in given):
        raise NotaGenError(f"period, composer and instrumentation are strings, got {given!r}")
    prompts = valid_prompts()
    period = _canonical("period", period, sorted({p.period for p in prompts}))
    composer = _fold(composer, {p.composer for p in prompts})
    periods_of = sorted({p.period for p in prompts if p.composer == composer})
    if periods_of and period not in periods_of:
        raise NotaGenError(f"composer {composer!r} is not in period {period!r}; use --period {periods_of[0]!r}")
    composer = _canonical("composer", composer, sorted({p.composer for p in prompts if p.period == period}))
    instrumentation = _canonical(
        "instrumentation",
        instrumentation,
        sorted({p.instrumentation for p in prompts if (p.period, p.composer) == (period, composer)}),
    )
    return Prompt(period, composer, instrumentation)
