"""How much of a 16-row patch on the fast path is _rows' split-K handshake: the ticket and the last
program's reduction + epilogue. NotaGen-X shape, random weights, fp16; the patch's two graphs
timed with CUDA events (median of 100 replays) with three builds of ``_rows``:

- ``base``: the fast path's kernel;
- ``ticketonly``: every program takes its ticket, none finishes (outputs wrong; timing only);
- ``noshake``: programs store their partial products and return (outputs wrong; timing only).

Each variant is a patched copy of ``decode_kernels.py`` written beside this script and swapped in
for ``_rows`` before an executor is made (its graphs capture the variant).
``python benchmarks/rows_finisher_cost.py``"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import tempfile

import torch

from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.fastpath import decode_kernels
from notagen_trt.fastpath.executor import FastBackend

from inflight_breakdown import graph_ms  # beside this script


def variants(folder: pathlib.Path) -> dict[str, object]:
    src = pathlib.Path(decode_kernels.__file__).read_text()
    head, tail = src.split("        # CUTLASS's serial split-K handshake", 1)
    texts = {"noshake": head + "        pass\n\n\n" + tail.split("\n\n\n", 1)[1],
             "ticketonly": src.replace("if ticket == SPLIT - 1:", "if ticket == SPLIT + 1000000:")}
    modules = {}
    for name, text in texts.items():
        path = folder / f"rows_{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"rows_{name}", path)
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules


def main() -> None:
    torch.manual_seed(0)
    fast = FastBackend(NotaGenModel(PRESETS["x"]), "cuda", "fp16")
    base, out = decode_kernels._rows, {}
    with tempfile.TemporaryDirectory() as folder:
        modules = variants(pathlib.Path(folder))
        for rows in (1, 16):
            executor = fast.executor(rows)
            out[f"base rows={rows}"] = graph_ms(executor, reps=100)
            executor.close()
        for round_ in range(2):  # interleaved: drift between variants shows as a round's spread
            for name, module in [("base", None), *modules.items()]:
                decode_kernels._rows = base if module is None else module._rows
                executor = fast.executor(16)
                out[f"{name} rows=16 r{round_}"] = graph_ms(executor, reps=100)
                executor.close()
    decode_kernels._rows = base
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
