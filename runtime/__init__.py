"""The lean runtime: numpy plus one inference backend. Never imports torch.

    from notagen_trt.runtime import GenerationConfig, PieceRequest, load_engine

    with load_engine(rows=4) as engine:          # the demo model on the fastest backend here
        for handle in engine.run(PieceRequest(config=GenerationConfig(seed=s)) for s in range(8)):
            print(handle.piece.stop_reason, handle.piece.text[-40:])
            handle.save("pieces")                # the files `generate` writes
"""

from .engine import Engine, Event, PieceHandle, PieceRequest, generate, load_engine
from .piece import GenerationConfig, Piece
from .prompts import Prompt, resolve_prompt
from .sampling import SamplingParams

__all__ = ["Engine", "Event", "GenerationConfig", "Piece", "PieceHandle", "PieceRequest", "Prompt", "SamplingParams",
           "generate", "load_engine", "resolve_prompt"]
