"""`notagen-trt export`: checkpoint -> ONNX step graphs with KV caches, checked against PyTorch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from notagen_trt.demo import demo_checkpoint
from notagen_trt.files import claim_out_dir, prepare_out_dir
from notagen_trt.manifest import graph_files


def _cmd_export(args: argparse.Namespace) -> int:
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.onnx_export import export_onnx

    checkpoint = Path(args.checkpoint) if args.checkpoint else demo_checkpoint()
    claim_out_dir(prepare_out_dir(args.out, "export"), "export", "onnx", "fp32", args.force)  # before the work
    manifest = export_onnx(
        load_model(checkpoint),
        args.out,
        checkpoint_path=checkpoint,
        opset=args.opset,
        parity=not args.no_parity,
        external_data=True if args.external_data else None,
        force=args.force,
        layout=args.layout,
    )
    parity = manifest.get("parity") or {}
    if args.json:
        print(json.dumps({"out": str(args.out), "parity": parity}))
    else:
        print(f"wrote {args.out}/{', '.join(graph_files(manifest))}, manifest.json")
        if parity:
            diffs = ", ".join(f"{phase} {diff:.2e}" for phase, diff in parity["max_abs_diff"].items())
            engine = parity.get("engine_graphs")
            if engine:
                diffs += ", " + ", ".join(f"{g} {d:.2e}" for g, d in engine["max_abs_diff"].items())
            print(
                f"parity vs PyTorch ({parity['patch_steps']} patch / {parity['char_steps']} char steps), "
                f"max |diff| (tolerance {parity['tolerance']}): {diffs}"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX step graphs with KV caches (+ parity check)")
    p.add_argument("--checkpoint", help=".pth or .safetensors checkpoint (default: the demo model)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the graphs (default 17)")
    p.add_argument("--layout", choices=("growing", "engine"), default="engine",
                   help="engine (default): the step graphs and the engine-ready graphs (fixed-capacity KV caches, "
                        "a whole patch per call for every row, sampling in the graph) that ONNX Runtime runs "
                        "batched and, on CUDA, as one CUDA graph per patch, with their CPU form (ONNX Runtime's "
                        "fused attention over the positions in use); growing: the step graphs only (smaller, "
                        "slower)")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    p.add_argument("--external-data", action="store_true", help="store weights beside the graphs (automatic > 1.5 GB)")
    p.add_argument("--force", action="store_true",
                   help="replace everything in --out even when it holds something other than an earlier export")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_cmd_export)
