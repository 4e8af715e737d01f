"""On a GPU machine: generate seeds with ONNX Runtime CUDA (IOBinding) and with the PyTorch
cached reference, check the pieces are identical, and report per-patch times side by side.
``python benchmarks/ort_cuda_check.py --model DIR [--seeds 5]``."""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from notagen_trt.export.checkpoint import load_model
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime.engine import generate as run_piece
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.onnx_backend import OrtBackend

from notagen_trt.demo import DEMO_CHECKPOINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="exported ONNX directory of the demo model")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    ort_cuda = OrtBackend(args.model, "cuda")
    backends = {"onnxruntime-cuda": ort_cuda, "onnxruntime-cpu": OrtBackend(args.model, "cpu"),
                "torch-cached-cuda": ReferenceBackend(load_model(DEMO_CHECKPOINT), "cached", "cuda")}
    rows, texts = {}, {}
    for name, backend in backends.items():
        run_piece(backend.executor(), None, GenerationConfig(seed=99, max_patches=8))
        pieces = [run_piece(backend.executor(), None, GenerationConfig(seed=s)) for s in range(args.seeds)]
        texts[name] = [p.text for p in pieces]
        rows[name] = {"ms_per_patch_median": round(statistics.median(1000 * p.seconds / p.patches for p in pieces), 3),
                      "patches": [p.patches for p in pieces]}
    same = all(texts[n] == texts["torch-cached-cuda"] for n in texts)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "identical_pieces": same, "backends": rows}, indent=2))


if __name__ == "__main__":
    main()
