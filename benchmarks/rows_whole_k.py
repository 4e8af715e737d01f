"""Is a 16-row patch cheaper when ``_rows`` holds each column block's whole input (no split, so no
split-K handshake) where it fits a program? NotaGen-X shape, random weights, fp16; the patch's two
graphs timed with CUDA events (median of 100 replays), builds interleaved over three rounds:

- ``split``: the shipped tiles (``PackedLinear.ROWS_TILES``, the input split over programs);
- ``whole BN/W``: ``PackedLinear.ROWS_WHOLE = (BN, W, most)``: BN output columns a program, W warps,
  the whole input where BN * K <= most (NotaGen-X: the 1280-input products; the MLP's 5120-input
  output projection stays split).

Each build's tokens and hidden state after one replay from the same state are compared with the
split build's. ``python benchmarks/rows_whole_k.py``"""

from __future__ import annotations

import json

import torch

from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.fastpath.decode_kernels import PackedLinear
from notagen_trt.fastpath.executor import FastBackend

from inflight_breakdown import graph_ms  # beside this script

BUILDS = {"split": None, "whole 16/4": (16, 4, 32768), "whole 16/8": (16, 8, 32768),
          "whole 32/8": (32, 8, 65536)}


def main() -> None:
    torch.manual_seed(0)
    fast = FastBackend(NotaGenModel(PRESETS["x"]), "cuda", "fp16")
    out: dict[str, object] = {}
    reference = None
    for round_ in range(3):
        for name, whole in BUILDS.items():
            PackedLinear.ROWS_WHOLE = whole
            # (the shared scratch, sized for the split tiles, holds what any of these builds uses)
            executor = fast.executor(16)
            out[f"{name} r{round_}"] = round(graph_ms(executor, reps=100), 4)
            if round_ == 0:
                torch.manual_seed(1)
                executor.hidden.normal_()
                for graph in executor._graphs:
                    graph.replay()
                torch.cuda.synchronize()
                state = (executor.tokens.clone(), executor.hidden_next.float().clone())
                if reference is None:
                    reference = state
                else:
                    out[f"{name} tokens equal"] = bool(torch.equal(state[0], reference[0]))
                    out[f"{name} hidden max diff"] = (state[1] - reference[1]).abs().max().item()
            executor.close()
            print(json.dumps({k: v for k, v in out.items() if k.startswith(name)}), flush=True)
    PackedLinear.ROWS_WHOLE = None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
