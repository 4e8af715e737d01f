"""`notagen-trt generate`: pieces from an exported model with the lean runtime."""

from __future__ import annotations

import argparse
import threading
import json
import sys
from pathlib import Path

from notagen_trt.demo import demo_model_dir
from notagen_trt.errors import NotaGenError


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from notagen_trt.runtime.backends import select_backend
    from notagen_trt.runtime.generate import GenerationConfig, generate_many
    from notagen_trt.runtime.outputs import write_piece
    from notagen_trt.runtime.postprocess import postprocess
    from notagen_trt.runtime.prompts import resolve_prompt

    if args.num_pieces < 1:
        raise NotaGenError(f"--num-pieces must be at least 1, got {args.num_pieces}")
    prompt = resolve_prompt(args.period, args.composer, args.instrumentation)
    configs = [
        GenerationConfig(seed=args.seed + k, max_patches=args.max_patches, max_seconds=args.max_seconds, bars=args.bars)
        for k in range(args.num_pieces)
    ]
    model = Path(args.model) if args.model else demo_model_dir()
    backend, why = select_backend(model, args.backend)
    if not args.json:
        print(f"backend: {backend.name} ({why})", file=sys.stderr)
    rows: list[dict] = [{} for _ in configs]
    # The converters (abc2xml, music21, verovio) keep global state and redirect stdout: one at a time.
    convert_lock = threading.Lock()

    def save(i: int, piece) -> None:
        """Write a piece the moment it ends: a later failure or interrupt cannot lose it."""
        abc = postprocess(piece.text)
        if not piece.complete:  # a piece cut short by a limit is kept, and says so
            abc += f"% incomplete: generation stopped by {piece.stop_reason} after {piece.patches} patches\n"
        with convert_lock:
            files, errors = write_piece(args.out, f"piece_seed{configs[i].seed}", abc)
        rows[i] = {
            "seed": configs[i].seed,
            "patches": piece.patches,
            "stop_reason": piece.stop_reason,
            "complete": piece.complete,
            "seconds": round(piece.seconds, 3),
            "ms_per_patch": round(1000 * piece.seconds / max(1, piece.patches), 3),
            "files": files,
            "errors": errors,
        }

    start = time.perf_counter()
    _with_progress(
        lambda cb: generate_many(backend, backend.config.patch_length, prompt, configs, args.workers, cb, save),
        args.num_pieces,
        quiet=args.json,
    )
    seconds = time.perf_counter() - start
    summary = {"backend": backend.name, "model": str(model), "seconds": round(seconds, 3), "pieces": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in rows:
            note = "" if r["complete"] else f" (stopped: {r['stop_reason']})"
            fails = "".join(f"\n    {k} failed: {v}" for k, v in r["errors"].items())
            print(
                f"seed {r['seed']}: {r['patches']} patches, {r['ms_per_patch']} ms/patch{note} -> "
                f"{', '.join(r['files'].values())}{fails}"
            )
    return 0


def _with_progress(run, total: int, quiet: bool):
    """Run ``run(on_patch)`` under a rich progress display on a terminal."""
    if quiet or not sys.stderr.isatty():
        return run(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pieces"),
        TextColumn("{task.fields[patches]} patches"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("generating", total=total, patches=0)
        counts = {"patches": 0}

        def on_patch(_index: int, added: str) -> None:
            counts["patches"] += 1
            bar.update(task, patches=counts["patches"])

        return run(on_patch)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate pieces with the lean runtime (ABC, MusicXML, MIDI, SVG)")
    p.add_argument("--model", help="exported model directory (default: the demo model)")
    p.add_argument("--backend", default="auto", help="auto, tensorrt, ort-cuda or ort-cpu (default: auto)")
    p.add_argument("--period")
    p.add_argument("--composer")
    p.add_argument("--instrumentation")
    p.add_argument("--seed", type=int, default=0, help="seed of the first piece; piece k uses seed + k")
    p.add_argument("--num-pieces", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="pieces generated at once through the loaded model")
    p.add_argument("--bars", type=int, default=None, help="force the length: [r:0/N] (N more bar lines)")
    p.add_argument("--max-patches", type=int, default=None, help="stop a piece after this many patches")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop a piece after this long")
    p.add_argument("--out", default="out", help="folder for the generated files (default: out)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_cmd_generate)
