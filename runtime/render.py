"""The ABC of a generated piece as a user gets it, made in one place for the CLI and the service
(a settings comment, the post-processed tune, a note when a limit cut it short), so a seed and a
prompt give the same text either way; ``outputs.convert`` makes its scores for both."""

from __future__ import annotations

from .piece import GenerationConfig, Piece
from .postprocess import postprocess
from .prompts import Prompt


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
