"""`notagen-trt eval`: accuracy of a model of any precision on held-out ABC (teacher forcing),
against its fp32 source, and the validity of seeded generated pieces."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from notagen_trt.demo import demo_model_dir
from notagen_trt.errors import NotaGenError


def _pieces(args: argparse.Namespace) -> list[str]:
    from notagen_trt.corpus import default_split, read_pieces
    from notagen_trt.runtime.evaluate import spread

    pieces = [t for _, t in read_pieces(args.data or default_split("heldout"))]
    if args.pieces is not None:
        if args.pieces < 1:
            raise NotaGenError(f"--pieces must be at least 1, got {args.pieces}")
        pieces = spread(pieces, args.pieces)  # over the sorted split
    return pieces


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.checkpoint and args.model:
        raise NotaGenError("give --checkpoint (PyTorch) or --model (ONNX directory), not both")
    if args.checkpoint and (args.backend, args.num_generated) != (None, None):
        raise NotaGenError("--checkpoint scores bits/char in PyTorch only; --backend and --num-generated are for "
                           "--model (drop them, or evaluate an exported --model DIR)")
    pieces = _pieces(args)
    if args.checkpoint:
        result = _eval_checkpoint(args, pieces)
    else:
        from notagen_trt.runtime.evaluate import evaluate

        backend = args.backend or "ort-cpu"
        if backend not in ("ort-cpu", "ort-cuda"):
            raise NotaGenError(f"unknown backend {backend!r}; choose ort-cpu or ort-cuda")
        model = Path(args.model) if args.model else demo_model_dir()
        generated = 8 if args.num_generated is None else args.num_generated
        with _cpu_form_progress() as progress:
            result = evaluate(model, pieces, generated, "cuda" if backend == "ort-cuda" else "cpu", progress=progress)
        if args.baseline:
            result["unigram_bits_per_char"] = _unigram(pieces, result)
    print(json.dumps(result) if args.json else report(result))
    gate = result.get("gate")
    return 1 if gate and not gate["passed"] else 0


def report(result: dict) -> str:
    """The eval result as aligned lines a person reads (``--json`` has every field)."""
    rows = [("model", f"{result['model']} ({result['precision']})")]
    if "pieces" in result:
        rows.append(("scored", f"{result['pieces']} pieces, {result['chars']:,} characters"))
    bits = f"{result['bits_per_char']:.4f}"
    if result.get("unigram_bits_per_char") is not None:
        bits += f" (unigram baseline {result['unigram_bits_per_char']:.4f})"
    rows.append(("bits/char", bits))
    if result.get("reference_bits_per_char") is not None:
        rows.append(("vs fp32", f"{100 * result['bits_per_char_change']:+.2f}% (fp32 "
                                f"{result['reference_bits_per_char']:.4f}, {result['reference']})"))
        rows.append(("top-1 agreement", f"{100 * result['top1_agreement']:.2f}%"))
        rows.append(("logit diff", f"max {result['max_abs_logit_diff']:.3g}, mean {result['mean_abs_logit_diff']:.3g}"))
    if result.get("cpu_form_top1_agreement") is not None:
        rows.append(("CPU form top-1", f"{100 * result['cpu_form_top1_agreement']:.2f}% (the engine-ready graphs "
                                       "ONNX Runtime runs on a CPU, drawn greedily against fp32's)"))
    rows.extend(_generated_rows(result.get("generated")))
    if result.get("gate"):
        g = result["gate"]
        rows.append(("gate", f"{'pass' if g['passed'] else 'FAIL'} (bits/char within "
                             f"{100 * g['max_bits_per_char_change']:g}% of fp32, top-1 at least "
                             f"{100 * g['min_top1_agreement']:g}%)"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _generated_rows(generated: list[dict] | None) -> list[tuple[str, str]]:
    if not generated:
        return []
    valid = sum(g["valid"] for g in generated)
    rows = [("valid pieces", f"{valid}/{len(generated)} generated (seeds 0..{len(generated) - 1}) parse, "
                             "convert and keep the meter")]
    for g in generated:
        if not g["valid"]:
            why = g["error"] or "a bar does not last what the meter says"
            rows.append((f"  seed {g['seed']}", f"invalid: {why}"))
    return rows


@contextlib.contextmanager
def _cpu_form_progress():
    """A progress bar on stderr for the CPU-form check (seconds a piece, minutes for a whole split);
    on a terminal, drawn by rich, elsewhere a line every tenth of the pieces."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        def line(done: int, total: int) -> None:
            if done == 1 or done == total or done % max(1, total // 10) == 0:
                print(f"eval: the CPU form generate runs, {done}/{total} pieces checked", file=sys.stderr, flush=True)

        yield line
        return
    with Progress(TextColumn("the CPU form generate runs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = None

        def advance(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("cpu-form", total=total)
            bar.update(task, completed=done)

        yield advance


def _eval_checkpoint(args: argparse.Namespace, pieces: list[str]) -> dict:
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.evaluate import bits_per_char

    model = load_model(args.checkpoint)
    result = {"model": str(args.checkpoint), "precision": "pytorch fp32",
              "bits_per_char": round(bits_per_char(model, pieces), 4)}
    if args.baseline:
        result["unigram_bits_per_char"] = _unigram(pieces, {"patch_length": model.config.patch_length})
    return result


def _unigram(pieces: list[str], result: dict) -> float:
    from notagen_trt.corpus import default_split, read_pieces
    from notagen_trt.runtime.evaluate import unigram_bits_per_char
    from notagen_trt.manifest import model_config, read_manifest

    length = result.get("patch_length") or model_config(read_manifest(result["model"])).patch_length
    train = [t for _, t in read_pieces(default_split("train"))]
    return round(unigram_bits_per_char(train, pieces, length), 4)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy vs fp32 (bits/char, top-1, logit diff) and validity of generated pieces")
    p.add_argument("--model", help="ONNX model directory of any precision (default: the demo model, exported)")
    p.add_argument("--checkpoint", help="evaluate a PyTorch checkpoint instead (bits/char only)")
    p.add_argument("--backend", default=None, help="--model: ort-cpu or ort-cuda (default: ort-cpu)")
    p.add_argument("--data", help=".abc file or folder (default: the shipped corpus's heldout split)")
    p.add_argument("--pieces", type=int, default=None, help="score N pieces spread over the sorted data (default: all)")
    p.add_argument("--num-generated", type=int, default=None,
                   help="--model: pieces generated (seeds 0..N-1) for validity (default 8)")
    p.add_argument("--baseline", action="store_true", help="also report a character-unigram baseline fitted on the train split")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)
