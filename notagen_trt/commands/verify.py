"""`notagen-trt verify`: compare two backends / precisions of the step graphs on real held-out
inputs (the comparison itself is ``engines/verify.py``)."""

from __future__ import annotations

import argparse
import json
import sys

from notagen_trt.engines.gates import VERIFY_TOLERANCES


def _cmd_verify(args: argparse.Namespace) -> int:
    from notagen_trt.demo import demo_model_dir
    from notagen_trt.engines.verify import verify

    report = verify(args.model or demo_model_dir(), args.against, args.data, args.pieces, args.atol, args.rtol,
                    args.checkpoint)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['subject']} vs {report['reference']} (atol {report['atol']}, rtol {report['rtol']}), "
              f"{report['pieces']} held-out pieces x 2 phases per step graph (the engine-ready graphs: "
              "export's parity check, eval's pieces)")
        for graph, entry in report["graphs"].items():
            for name, s in entry["outputs"].items():
                mark = "ok" if s["passed"] else "FAIL"
                print(f"  {graph:13s} {name:26s} max|d| {s['max_abs']:.2e}  mean|d| {s['mean_abs']:.2e}  "
                      f"max rel {s['max_rel']:.2e}  {mark}")
    if not report["passed"]:
        print("notagen-trt verify: outputs differ beyond the tolerance", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    defaults = ", ".join(f"{p} {a:g} / {r:g}" for p, (a, r) in VERIFY_TOLERANCES.items())
    p = sub.add_parser("verify", help="compare two backends / precisions on real inputs (Polygraphy)")
    p.add_argument("--model", help="ONNX or engine directory to check (default: the demo model's ONNX)")
    p.add_argument("--against", default="torch", help="torch (the PyTorch checkpoint), or an ONNX / engine directory")
    p.add_argument("--checkpoint", help="checkpoint for --against torch (default: the one the model was exported from)")
    p.add_argument("--data", help="folder or file of ABC pieces (default: calibration_data/heldout)")
    p.add_argument("--pieces", type=int, default=3, help="held-out pieces whose inputs are compared (default 3)")
    p.add_argument("--atol", type=float, help=f"absolute tolerance (default per precision, the looser side's "
                   f"atol / rtol: {defaults})")
    p.add_argument("--rtol", type=float, help="relative tolerance; an element fails where both are exceeded "
                   "(default per precision, see --atol)")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.set_defaults(func=_cmd_verify)
