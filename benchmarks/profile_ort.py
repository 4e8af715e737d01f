"""Where an ONNX Runtime patch goes: the engine-ready graph's nodes by op type, from ONNX
Runtime's own profiler, over the patches of one piece through the production engine.

``python benchmarks/profile_ort.py --model DIR [--device cpu|cuda] [--rows 1] [--patches 40]``

On a CPU the profiler adds a few microseconds to every node, so read the shares and node counts,
not the absolute times (``notagen-trt bench`` gives those). With CUDA the patch runs without its
CUDA graph, and launches block (``CUDA_LAUNCH_BLOCKING=1``, set here) so that a node's time is its
kernels' time plus one launch each."""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from notagen_trt.bench import context_text
from notagen_trt.runtime import onnx_backend
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.graph_executor import GraphExecutor
from notagen_trt.runtime.piece import GenerationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with the engine-ready graphs")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.device == "cuda":
        os.environ["CUDA_LAUNCH_BLOCKING"] = "1"  # before the CUDA provider starts
    folder = Path(tempfile.mkdtemp(prefix="ort-profile-"))
    plain = onnx_backend.session_options

    def profiled(threads, spin=False):
        options = plain(threads, spin)
        options.enable_profiling, options.profile_file_prefix = True, str(folder / "ort")
        return options

    onnx_backend.session_options = profiled  # every session the backend makes writes a profile
    backend = onnx_backend.OrtBackend(args.model, args.device, threads=1)
    if args.device == "cuda":  # one GraphExecutor, without the CUDA graph that would hide the nodes
        executor = GraphExecutor(backend.model_dir, backend.manifest, backend.config, args.rows,
                                 onnx_backend.session_options(1), "cuda", cuda_graph=False)
    else:
        executor = backend.executor(args.rows)
    text = context_text(args.context)
    Engine(executor).generate([PieceRequest(None, GenerationConfig(seed=i, max_patches=args.patches), text)
                               for i in range(args.rows)])
    parts = getattr(executor, "parts", [executor])
    files = [part._engine.end_profiling() for part in parts]  # the patch_engine sessions only
    events = [e for f in files for e in json.loads(Path(f).read_text())]
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    total, count = collections.Counter(), collections.Counter()
    for e in nodes:
        total[e["args"]["op_name"]] += e["dur"]
        count[e["args"]["op_name"]] += 1
    calls = len(runs)
    print(f"(ONNX Runtime's profiles: {folder})")
    print(f"{args.model}: {calls} patch calls, median {np.median(runs) / 1000:.2f} ms under the profiler, "
          f"{len(nodes) / calls:.0f} nodes a call, {sum(total.values()) / calls / 1000:.2f} ms in nodes")
    print(f"{'op':24s} {'us/call':>9s} {'share':>6s} {'nodes/call':>10s} {'us/node':>8s}")
    for op, us in total.most_common():
        print(f"{op:24s} {us / calls:9.1f} {us / sum(total.values()):6.1%} {count[op] / calls:10.0f} "
              f"{us / count[op]:8.2f}")


if __name__ == "__main__":
    main()
