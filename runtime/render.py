"""The ABC of a generated piece as a user gets it, made in one place for the CLI and the service
(a settings comment, the post-processed tune, a note when a limit cut it short), so a seed and a
prompt give the same text either way; ``outputs.convert`` makes its scores for both."""

from __future__ import annotations

import re
from pathlib import Path

from .piece import GenerationConfig, Piece
from .postprocess import postprocess
from .prompts import Prompt
from .sampling import SamplingParams


def settings_comment(prompt: Prompt | None, config: GenerationConfig, backend: str) -> str:
    """An ABC comment line recording how a piece was made (converters ignore comments); ``backend``
    names the backend, and the model and precision where the caller knows them (Engine.made_by)."""
    s = config.sampling
    who = f"{prompt.period} / {prompt.composer} / {prompt.instrumentation}" if prompt else "unconditional"
    return (f"% notagen-trt: prompt {who}; seed {config.seed}; top_k {s.top_k}, top_p {s.top_p:g}, "
            f"temperature {s.temperature:g}" + (f"; bars {config.bars}" if config.bars is not None else "")
            + (f"; meter {config.meter}" if config.meter else "") + (f"; key {config.key}" if config.key else "")
            + f"; backend {backend}\n")


def piece_abc(prompt: Prompt | None, config: GenerationConfig, piece: Piece, backend: str) -> str:
    """The .abc text of a finished piece, exactly as `generate` writes it."""
    abc = settings_comment(prompt, config, backend) + postprocess(piece.text)
    if not piece.complete:  # a piece cut short by a limit is kept, and says so
        abc += f"% incomplete: generation stopped by {piece.stop_reason} after {piece.patches} patches\n"
    return abc


def piece_stem(prompt, seed: int, bars: int | None, sampling, meter: str | None = None, key: str | None = None,
               continues: str | None = None) -> str:
    """File name of a piece: its prompt, seed and any non-default setting, so runs with other
    prompts or settings never overwrite each other's pieces."""
    def name(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9#]+", "-", text).strip("-").replace("#", "sharp")

    parts = [name(p) for p in (prompt.period, prompt.composer, prompt.instrumentation)] if prompt else []
    if continues:
        parts.append(f"after-{name(Path(continues).stem)}")
    parts.append(f"seed{seed}")
    if bars is not None:
        parts.append(f"bars{bars}")
    parts += [f"{field}{name(value)}" for field, value in (("M", meter), ("K", key)) if value]
    if sampling != SamplingParams():
        parts.append(f"k{sampling.top_k}-p{sampling.top_p:g}-t{sampling.temperature:g}")
    return "piece_" + "_".join(parts)
