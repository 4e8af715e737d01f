"""`notagen-trt bench`: per-patch latency of backends and precisions beside the published algorithm."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from notagen_trt.errors import NotaGenError
from notagen_trt.files import check_out_file, writing

from .argtypes import whole_number

PRECISIONS = ("fp32", "fp16", "int8-wo", "int8")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def _cmd_bench(args: argparse.Namespace) -> int:
    from notagen_trt import bench
    from notagen_trt.manifest import model_config, read_manifest

    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(bench.BACKENDS))
    if unknown:
        raise NotaGenError(f"unknown backends {unknown}; choose from {', '.join(bench.BACKENDS)}")
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown:  # a typo would otherwise be timed as fp32 under its own label
        raise NotaGenError(f"unknown precisions {unknown}; choose from {', '.join(PRECISIONS)}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:  # before the run: a path that cannot be written would lose its results
            check_out_file(path, flag)
    _check_available(backends, args.torch_device)
    with tempfile.TemporaryDirectory(prefix="notagen-bench-") as tmp:
        if args.model:
            model_dir = Path(args.model)
            config = model_config(read_manifest(model_dir))
        else:  # random weights are fine for speed; export them once if ONNX Runtime rows need them
            config = bench.config_for(args.size)
            model_dir = Path(tmp) / "model"
            if any(b.startswith("ort") for b in backends):
                import torch

                from notagen_trt.export.model import NotaGenModel
                from notagen_trt.export.onnx_export import export_onnx

                torch.manual_seed(0)
                export_onnx(NotaGenModel(config), model_dir, parity=False, layout=args.layout)
        longest = args.warmup + args.patches + 2
        if args.context + longest >= config.patch_length:
            raise NotaGenError(f"--context {args.context} + {longest} generated patches must stay "
                               f"below the model's PATCH_LENGTH {config.patch_length}")
        # ONNX rows of each asked precision: the fp32 directory, or a variant quantized from it.
        onnx_dirs = {"fp32": model_dir}
        for precision in args.precisions:
            if precision != "fp32" and any(b.startswith("ort") for b in backends):
                from notagen_trt.engines.quantize import quantize

                onnx_dirs[precision] = Path(tmp) / precision
                quantize(model_dir, precision, onnx_dirs[precision], calib_pieces=4)
        torch_device = args.torch_device
        if torch_device == "auto":
            import torch

            torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        common = {"config": config.to_dict(), "context": args.context, "patches": args.patches,
                  "warmup": args.warmup, "patches_per_piece": args.patches_per_piece,
                  "model_dir": str(model_dir), "torch_device": torch_device,
                  "inflight_patches": args.inflight_patches}
        specs = [{**common, "backend": "torch-published", "precision": "fp32", "batch": 1,
                  "patches": args.published_patches, "warmup": 1}]
        for backend in backends:
            for precision in args.precisions:
                if backend in bench.TORCH_BACKENDS and precision not in ("fp32", "fp16", "int8-wo"):
                    continue  # PyTorch rows: fp32 / fp16, and int8-wo on the fast path (CUDA)
                if precision == "int8-wo" and backend == "torch-cached":
                    continue
                for batch in args.batch:
                    if backend == "torch-cached" and batch > 1:
                        continue  # the PyTorch reference is batch 1, like the published code
                    spec = {**common, "backend": backend, "precision": precision, "batch": batch,
                            "model_dir": str(onnx_dirs.get(precision, model_dir))}
                    specs.append(spec)
                    if args.inflight:  # K pieces of mixed lengths through the same rows
                        specs.append({**spec, "inflight": args.inflight})
        # Rounds: every row once a round, rows in turn, so a machine's drift falls on all of them
        # alike; a row reports the median over the rounds and each ratio is the median of its
        # per-round ratios (published and in-flight rows measured in the same round).
        rounds: list[list[dict]] = []
        for r in range(args.rounds):
            rounds.append([])
            for spec in specs:
                row = bench.run_subprocess(spec)
                rounds[-1].append(row)
                if not args.json_only:
                    print(json.dumps({**row, "round": r + 1} if args.rounds > 1 else row), flush=True)
    rows = [_merge([round_[i] for round_ in rounds]) for i in range(len(specs))]
    pub = next((i for i, r in enumerate(rows) if r.get("backend") == "torch-published" and "error" not in r), None)
    ref_ms = rows[pub]["ms_per_patch_median"] if pub is not None else None
    for i, row in enumerate(rows):
        per_round = [round_[i] for round_ in rounds]
        if pub is not None and "ms_per_patch_median" in row:
            ratios = [round_[pub]["ms_per_patch_median"] / r["ms_per_patch_median"]
                      for round_, r in zip(rounds, per_round)]
            row["speedup_vs_published"] = round(statistics.median(ratios), 2)
            if args.rounds > 1:
                row["speedup_per_round"] = [round(x, 2) for x in ratios]
        if row.get("inflight_pieces"):  # the same K pieces through one row, in this run
            one = next((j for j, r in enumerate(rows) if r.get("inflight_pieces") and r["batch"] == 1
                        and (r["backend"], r["precision"]) == (row["backend"], row["precision"])), None)
            if one is not None and "error" not in rows[one]:
                ratios = [r["pieces_per_minute"] / round_[one]["pieces_per_minute"]
                          for r, round_ in zip(per_round, rounds)]
                row["inflight_vs_one_row"] = round(statistics.median(ratios), 2)
                if args.rounds > 1:
                    row["inflight_vs_one_row_per_round"] = [round(x, 2) for x in ratios]
    bandwidth = bench.measure_copy_bandwidth_gb_s() if torch_device == "cuda" else None
    report = {
        "model": config.to_dict(),
        "size": args.size if not args.model else str(args.model),
        "context": args.context,
        "rounds": args.rounds,
        "cpu": bench.cpu_info(),
        "gpu": next((r["device"] for r in rows if r.get("peak_gpu_mb") is not None), None),
        "reference": {"published_ms_per_patch_median": ref_ms, "algorithm": "PyTorch, no KV cache, numpy sampling per char"},
        "bandwidth_floor": None if bandwidth is None else {
            "measured_copy_gb_s": round(bandwidth, 1),
            "fp16_ms_per_patch": round(bench.bandwidth_floor_ms(config, 2, bandwidth), 3),
            "fp32_ms_per_patch": round(bench.bandwidth_floor_ms(config, 4, bandwidth), 3),
        },
        "results": rows,
    }
    if args.json:
        with writing(args.json, fix="choose another --json"):
            Path(args.json).write_text(json.dumps(report, indent=2))
    _table(report)
    if args.plot:
        _plot(report, args.plot)
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"bench: {r['backend']} {r['precision']} rows {r['batch']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _check_available(backends: list[str], torch_device: str) -> None:
    """Refuse, before any row runs, what cannot run on this machine (the published row comes first
    and takes minutes on the bigger shapes)."""
    if torch_device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NotaGenError("--torch-device cuda: no CUDA GPU visible to PyTorch; use --torch-device cpu or auto")
    if "ort-cuda" in backends:
        try:
            import onnxruntime as ort
        except ImportError:
            raise NotaGenError("--backends ort-cuda needs onnxruntime-gpu: pip install 'notagen-trt[ort-gpu]'") from None
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise NotaGenError("--backends ort-cuda: this ONNX Runtime has no CUDA provider (pip install "
                               "onnxruntime-gpu on a machine with a CUDA GPU); leave ort-cuda out of --backends")


def _merge(per_round: list[dict]) -> dict:
    """One row from its rounds: medians of the timings, the peak memory; an error if any round failed."""
    failed = next((r for r in per_round if "error" in r), None)
    if failed or len(per_round) == 1:
        return dict(failed or per_round[0])
    row = dict(per_round[0])
    for key in ("ms_per_patch_median", "ms_per_patch_p90", "pieces_per_minute", "inflight_seconds"):
        if row.get(key) is not None:
            row[key] = round(statistics.median(r[key] for r in per_round), 3)
    for key in ("peak_rss_mb", "peak_gpu_mb", "gpu_process_mb"):
        if row.get(key) is not None:
            row[key] = max(r[key] for r in per_round)
    row["ms_per_patch_per_round"] = [r["ms_per_patch_median"] for r in per_round]
    return row


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cpu = report["cpu"]
    where = report.get("gpu") or (f"{cpu['model']}, {cpu['cores']} cores ({' '.join(cpu['flags'])}), "
                                  f"{cpu['allocator']} malloc")
    rounds = report.get("rounds", 1)
    over = f", median of {rounds} rounds" if rounds > 1 else ""
    table = Table(title=f"ms per patch at context {report['context']} (median{over}), {where}")
    for col in ("backend", "precision", "rows", "ms/patch", "p90", "x published", "pieces/min", "RSS MB", "GPU MB"):
        table.add_column(col, justify="right" if col not in ("backend", "precision") else "left")
    for r in report["results"]:
        if "error" in r:
            table.add_row(r["backend"], r["precision"], str(r["batch"]), f"error: {r['error']}", "", "", "", "", "")
            continue
        label = r["backend"] + (f" in-flight x{r['inflight_pieces']}" if r.get("inflight_pieces") else "")
        if r.get("inflight_vs_one_row") and r["batch"] > 1:
            label += f" ({r['inflight_vs_one_row']:.1f}x one row)"
        rows = str(r["batch"]) + (f" ({r['lanes']} lanes)" if r.get("lanes", 1) > 1 else "")  # lanes step at once
        table.add_row(label, r["precision"], rows, f"{r['ms_per_patch_median']:.2f}",
                      f"{r['ms_per_patch_p90']:.2f}", f"{r.get('speedup_vs_published', 0):.1f}",
                      f"{r['pieces_per_minute']:.1f}", f"{r['peak_rss_mb']:.0f}",
                      "" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}")
    Console(stderr=True, width=140).print(table)
    floor = report.get("bandwidth_floor")
    if floor:
        Console(stderr=True).print(f"weight-bandwidth floor: {floor['fp16_ms_per_patch']} ms/patch fp16, "
                                   f"{floor['fp32_ms_per_patch']} ms fp32 at {floor['measured_copy_gb_s']} GB/s")


def _plot(report: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NotaGenError("--plot needs matplotlib: pip install matplotlib") from None
    rows = [r for r in report["results"] if "error" not in r]
    labels = [f"{r['backend']}\n{r['precision']} b{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.2), 4))
    ax.bar(labels, [r["ms_per_patch_median"] for r in rows], color="tab:blue")
    floor = report.get("bandwidth_floor")
    if floor:
        ax.axhline(floor["fp16_ms_per_patch"], color="tab:red", linestyle="--", label="fp16 bandwidth floor")
        ax.legend()
    ax.set_yscale("log")
    ax.set_ylabel("ms per patch (median)")
    ax.set_title(f"context {report['context']} patches, {report.get('gpu') or report['cpu']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _low_high(text: str) -> list[int]:
    values = _ints(text)
    if len(values) != 2 or not 1 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"give LO,HI with 1 <= LO <= HI, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="per-patch latency of backends vs the published algorithm (one run)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="exported model directory")
    src.add_argument("--size", default="demo", choices=["demo", "small", "medium", "x"],
                     help="random weights of a published shape (default: demo's shape)")
    p.add_argument("--backends", default="ort-cpu,torch-cached",
                   help="comma list: ort-cpu, ort-cuda, torch-cached, fast (the fast CUDA path; eager PyTorch on a CPU)")
    p.add_argument("--precisions", type=lambda t: [v for v in t.split(",") if v], default=["fp32"],
                   help="comma list: fp32, fp16, int8-wo, int8 (ONNX rows quantize the model; PyTorch rows: fp32, "
                        "fp16, and int8-wo on fast)")
    p.add_argument("--batch", type=_ints, default=[1], help="comma list of batch sizes, e.g. 1,4,16")
    p.add_argument("--context", type=whole_number(1), default=256, help="context length in patches (default 256)")
    p.add_argument("--layout", choices=("engine", "growing"), default="engine",
                   help="graphs the ONNX Runtime rows export random weights to: engine (the engine-ready graphs, "
                        "one call per patch for every row, as the demo model runs) or growing (the step graphs)")
    p.add_argument("--patches", type=whole_number(1), default=30, help="timed patches per row (median reported)")
    p.add_argument("--published-patches", type=whole_number(1), default=5, help="timed patches for the published row")
    p.add_argument("--warmup", type=whole_number(0), default=3, help="untimed patches before each row's timing (default 3)")
    p.add_argument("--rounds", type=whole_number(1), default=1,
                   help="measure every row this many times, rows in turn, and report medians (ratios: the median "
                        "of each round's ratio), so that a machine's drift falls on every row alike (default 1)")
    p.add_argument("--inflight", type=whole_number(0), default=0, metavar="K",
                   help="also send K pieces of mixed lengths through each row count (wall-clock pieces per minute)")
    p.add_argument("--inflight-patches", type=_low_high, default=[100, 400], metavar="LO,HI",
                   help="in-flight piece lengths, drawn uniformly in LO..HI patches (default 100,400: a few hundred "
                        "patches is a typical piece)")
    p.add_argument("--patches-per-piece", type=whole_number(1), default=400, help="for pieces per minute")
    p.add_argument("--torch-device", default="auto", help="device of the PyTorch rows: auto (a GPU if any), cpu, cuda")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--json-only", action="store_true", help="do not print rows as they finish")
    p.add_argument("--plot", help="write a PNG bar chart here")
    p.set_defaults(func=_cmd_bench)
