"""`notagen-trt quantize`: an fp32 model directory -> an fp16, int8 weight-only or int8 variant (ONNX)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from notagen_trt.demo import demo_model_dir
from notagen_trt.files import claim_out_dir, prepare_out_dir
from notagen_trt.manifest import ENGINE_LAYOUT_FIX, graph_files, step_graphs_only


def _cmd_quantize(args: argparse.Namespace) -> int:
    from notagen_trt.engines.quantize import quantize

    # The output folder is checked before the demo model is exported or anything is calibrated.
    claim_out_dir(prepare_out_dir(args.out, "quantize"), "quantize", "onnx", args.precision, args.force)
    model = Path(args.model) if args.model else demo_model_dir()
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    manifest = quantize(model, args.precision, args.out, calib=args.calib, calib_pieces=args.calib_pieces,
                        method=args.method, exclude=args.exclude, log=log, force=args.force)
    recipe = manifest["quantization"]
    if args.json:
        print(json.dumps({"out": str(args.out), "precision": args.precision, "quantization": recipe}))
    else:
        graphs = ", ".join(graph_files(manifest))
        cpu = recipe.get("cpu_form")
        cpu = f"; *.cpu.onnx, for ONNX Runtime on a CPU: weights {cpu['weights']}, activations " \
              f"{cpu['activations']}" if cpu else ""
        print(f"wrote {args.out}/{graphs}, manifest.json ({args.precision}: "
              f"weights {recipe['weights']}, activations {recipe['activations']}{cpu}); check it with "
              f"`notagen-trt eval --model {args.out}`")
        if step_graphs_only(manifest):  # the variant keeps its source's layout (int8 aside)
            cpu_form = " and no CPU form (the int8 kernels that make int8-wo fast on a CPU)" * (args.precision == "int8-wo")
            print(f"note: {model} has the step graphs only, so the variant has no engine-ready graphs{cpu_form}; "
                  f"{ENGINE_LAYOUT_FIX}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write an fp16 / int8 weight-only / int8 variant of an exported model")
    p.add_argument("--model", help="fp32 model directory from `notagen-trt export` (default: the demo model)")
    p.add_argument("--precision", required=True, choices=["fp16", "int8-wo", "int8"],
                   help="fp16; int8-wo (int8 weights: the fast one on a CPU); int8 (weights and activations, "
                        "calibrated on ABC: for TensorRT)")
    p.add_argument("--out", required=True, help="variant directory to write")
    p.add_argument("--calib", help=".abc file or folder for calibration (default: the shipped calib split)")
    p.add_argument("--calib-pieces", type=int, default=32, help="calibration pieces to run (default: 32)")
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="int8 activation calibration method (default: minmax)")
    p.add_argument("--exclude", nargs="*", default=[], metavar="NODE",
                   help="int8: node names kept in float (e.g. the lm_head MatMul)")
    p.add_argument("--force", action="store_true",
                   help="replace everything in --out even when it holds something other than this precision's variant")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_cmd_quantize)
