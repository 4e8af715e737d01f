"""`notagen-trt build`: ONNX model directory -> TensorRT plans (full TensorRT or TensorRT-RTX) + manifest."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_build(args: argparse.Namespace) -> int:
    from notagen_trt.demo import demo_model_dir
    from notagen_trt.engines.build import build_engines
    from notagen_trt.files import prepare_engine_out

    claim = prepare_engine_out(args.out, args.model, args.force)  # a bad --out fails before any work
    model = args.model or demo_model_dir()
    ccs = [c.strip() for c in args.compute_capability.split(",") if c.strip()] if args.compute_capability else None
    manifest = build_engines(model, args.out, flavor=args.flavor, max_batch=args.max_batch, compute_capabilities=ccs,
                             timing_cache=args.timing_cache, version_compatible=args.version_compatible,
                             optimization_level=args.optimization_level,
                             log=_stderr if args.json else print)  # --json: stdout holds the JSON alone
    # The previous contents of --out (an earlier engine, or anything --force replaced) go now.
    claim.finish(["manifest.json", *(g["file"] for g in manifest["graphs"].values())])
    engine = manifest["engine"]
    rows = {name: {"bytes": g["plan"]["bytes"], "build_seconds": g["build_seconds"]}
            for name, g in manifest["graphs"].items()}
    if args.json:
        print(json.dumps({"out": str(args.out), "engine": engine, "plans": rows}))
    else:
        print(f"{engine['flavor']} {engine['version']}, precision {manifest['precision']}, compute capability "
              f"{', '.join(engine['compute_capabilities'])}; manifest {args.out}/manifest.json")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build TensorRT / TensorRT-RTX plans from an ONNX model directory")
    p.add_argument("--model", help="ONNX model directory (fp32 or a precision variant; default: the demo model)")
    p.add_argument("--flavor", choices=("trt", "rtx"), default="rtx",
                   help="rtx (default): TensorRT-RTX, builds without a GPU; trt: full TensorRT, built on the target GPU")
    p.add_argument("--out", required=True, help="engine directory to write")
    p.add_argument("--force", action="store_true",
                   help="replace whatever --out holds (by default only an earlier engine of this precision)")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch the profiles allow (default 1)")
    p.add_argument("--compute-capability", help="comma-separated targets, e.g. 8.6,8.9,12.0 (rtx); trt: this GPU's, "
                   "or ampere+ (default: this GPU, or 8.6,8.9,12.0 for rtx without one)")
    p.add_argument("--timing-cache", help="timing cache file to read and update (full TensorRT; a no-op in RTX)")
    p.add_argument("--version-compatible", action="store_true",
                   help="plans that newer TensorRT versions of the same major version can run")
    p.add_argument("--optimization-level", type=int, choices=range(6), metavar="0-5",
                   help="builder optimization level (default: the builder's, 3)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (progress and TensorRT's messages go to stderr)")
    p.set_defaults(func=_cmd_build)
