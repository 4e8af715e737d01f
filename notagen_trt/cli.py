"""The ``notagen-trt`` command line. Each subcommand imports only what its stage needs, so the
runtime commands work without torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from notagen_trt.errors import NotaGenError

DEMO_CHECKPOINT = Path(__file__).parent / "data" / "demo.pth"


def _demo_checkpoint() -> Path:
    if not DEMO_CHECKPOINT.is_file():
        raise NotaGenError(f"{DEMO_CHECKPOINT}: the demo model is missing from this install; reinstall the package "
                           "or pass --checkpoint")
    return DEMO_CHECKPOINT


def _demo_model_dir() -> Path:
    """The demo checkpoint exported to ONNX once, in the user cache, keyed by its hash."""
    import hashlib
    import os

    checkpoint = _demo_checkpoint()
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "notagen-trt" / f"demo-{digest}"
    if not (cache / "manifest.json").is_file():
        try:
            from notagen_trt.export.checkpoint import load_model
            from notagen_trt.export.onnx_export import export_onnx
        except ImportError:
            raise NotaGenError("the demo model must be exported once, which needs torch: "
                               "pip install 'notagen-trt[export]', or pass --model DIR") from None
        print(f"exporting the demo model to {cache} (once)", file=sys.stderr)
        export_onnx(load_model(checkpoint), cache, checkpoint_path=checkpoint)
    return cache


def _cmd_export(args: argparse.Namespace) -> int:
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.onnx_export import export_onnx

    checkpoint = Path(args.checkpoint) if args.checkpoint else _demo_checkpoint()
    manifest = export_onnx(load_model(checkpoint), args.out, checkpoint_path=checkpoint, opset=args.opset,
                           parity=not args.no_parity, external_data=True if args.external_data else None)
    parity = manifest.get("parity") or {}
    if args.json:
        print(json.dumps({"out": str(args.out), "parity": parity}))
    else:
        print(f"wrote {args.out}/patch_decoder.onnx, char_decoder.onnx, manifest.json")
        if parity:
            diffs = ", ".join(f"{phase} {diff:.2e}" for phase, diff in parity["max_abs_diff"].items())
            print(f"parity vs PyTorch ({parity['patch_steps']} patch / {parity['char_steps']} char steps), "
                  f"max |diff| (tolerance {parity['tolerance']}): {diffs}")
    return 0


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
    configs = [GenerationConfig(seed=args.seed + k, max_patches=args.max_patches, max_seconds=args.max_seconds,
                                bars=args.bars) for k in range(args.num_pieces)]
    model = Path(args.model) if args.model else _demo_model_dir()
    backend, why = select_backend(model, args.backend)
    if not args.json:
        print(f"backend: {backend.name} ({why})", file=sys.stderr)
    start = time.perf_counter()
    pieces = _with_progress(lambda cb: generate_many(backend, backend.config.patch_length, prompt, configs,
                                                     args.workers, cb), args.num_pieces, quiet=args.json)
    seconds = time.perf_counter() - start
    rows = []
    for config, piece in zip(configs, pieces):
        files, errors = write_piece(args.out, f"piece_seed{config.seed}", postprocess(piece.text))
        rows.append({"seed": config.seed, "patches": piece.patches, "stop_reason": piece.stop_reason,
                     "complete": piece.complete, "seconds": round(piece.seconds, 3),
                     "ms_per_patch": round(1000 * piece.seconds / max(1, piece.patches), 3),
                     "files": files, "errors": errors})
    summary = {"backend": backend.name, "model": str(model), "seconds": round(seconds, 3), "pieces": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in rows:
            note = "" if r["complete"] else f" (stopped: {r['stop_reason']})"
            fails = "".join(f"\n    {k} failed: {v}" for k, v in r["errors"].items())
            print(f"seed {r['seed']}: {r['patches']} patches, {r['ms_per_patch']} ms/patch{note} -> "
                  f"{', '.join(r['files'].values())}{fails}")
    return 0


def _with_progress(run, total: int, quiet: bool):
    """Run ``run(on_patch)`` under a rich progress display on a terminal."""
    if quiet or not sys.stderr.isatty():
        return run(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("pieces"),
                  TextColumn("{task.fields[patches]} patches"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("generating", total=total, patches=0)
        counts = {"patches": 0}

        def on_patch(_index: int, added: str) -> None:
            counts["patches"] += 1
            bar.update(task, patches=counts["patches"])

        return run(on_patch)


def _cmd_train(args: argparse.Namespace) -> int:
    from notagen_trt.config import ModelConfig
    from notagen_trt.corpus import default_split
    from notagen_trt.export.train import TrainConfig, train

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = ModelConfig(hidden_size=args.hidden, patch_num_layers=args.patch_layers,
                         char_num_layers=args.char_layers, patch_length=args.patch_length)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, dropout=args.dropout, batch_patches=args.batch_patches,
                      max_minutes=args.max_minutes, seed=args.seed, eval_every=args.eval_every)
    summary = train(config, args.data or default_split("train"), args.eval or default_split("calib"), args.out,
                    cfg, device=device)
    print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from notagen_trt.corpus import default_split, read_pieces
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.evaluate import bits_per_char, unigram_bits_per_char

    model = load_model(args.checkpoint or _demo_checkpoint())
    data = [t for _, t in read_pieces(args.data or default_split("heldout"))]
    result = {"bits_per_char": round(bits_per_char(model, data), 4)}
    if args.baseline:
        train = [t for _, t in read_pieces(default_split("train"))]
        result["unigram_bits_per_char"] = round(unigram_bits_per_char(train, data, model.config.patch_length), 4)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.reference import ReferenceBackend
    from notagen_trt.runtime import abcio
    from notagen_trt.runtime.generate import GenerationConfig
    from notagen_trt.runtime.postprocess import postprocess
    from notagen_trt.runtime.prompts import resolve_prompt

    prompt = resolve_prompt(args.period, args.composer, args.instrumentation)
    backend = ReferenceBackend(load_model(args.checkpoint or _demo_checkpoint()), args.mode, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(args.seed, args.seed + args.num_pieces):
        piece = backend.generate(prompt, GenerationConfig(seed=seed, max_patches=args.max_patches))
        abc = postprocess(piece.text)
        path = out / f"piece_seed{seed}.abc"
        path.write_text(abc, encoding="utf-8")
        rows.append({"seed": seed, "file": str(path), "patches": piece.patches, "stop": piece.stop_reason,
                     "seconds": round(piece.seconds, 2)})
        if not args.no_check:
            validity = abcio.check(abc)
            rows[-1].update(music21=validity.music21, abc2xml=validity.abc2xml, error=validity.error)
        print(json.dumps(rows[-1]), flush=True)
    summary = {"pieces": len(rows), "mode": args.mode}
    if not args.no_check:
        summary.update(music21_ok=sum(r["music21"] for r in rows), abc2xml_ok=sum(r["abc2xml"] for r in rows))
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notagen-trt", description="Compile NotaGen music models into fast inference engines and run them.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a checkpoint to ONNX step graphs with KV caches (+ parity check)")
    p.add_argument("--checkpoint", help=".pth or .safetensors checkpoint (default: the demo model)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    p.add_argument("--external-data", action="store_true", help="store weights beside the graphs (automatic > 1.5 GB)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("generate", help="generate pieces with the lean runtime (ABC, MusicXML, MIDI, SVG)")
    p.add_argument("--model", help="exported model directory (default: the demo model)")
    p.add_argument("--backend", default="auto", help="auto, ort-cuda or ort-cpu (default: auto)")
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

    p = sub.add_parser("train", help="train a NotaGen-architecture model on ABC pieces (the demo model)")
    p.add_argument("--data", help="folder of training .abc pieces (default: the shipped corpus's train split)")
    p.add_argument("--eval", help="folder of .abc pieces to pick the best step on (default: calib split)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pth, published format)")
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--patch-layers", type=int, default=5)
    p.add_argument("--char-layers", type=int, default=2)
    p.add_argument("--patch-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-patches", type=int, default=8192)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="bits per character on held-out ABC (teacher forcing)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the demo model)")
    p.add_argument("--data", help=".abc file or folder (default: the shipped corpus's heldout split)")
    p.add_argument("--baseline", action="store_true", help="also report a character-unigram baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("reference", help="generate with the PyTorch reference generator (published or cached)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the demo model)")
    p.add_argument("--mode", choices=["published", "cached"], default="cached")
    p.add_argument("--period")
    p.add_argument("--composer")
    p.add_argument("--instrumentation")
    p.add_argument("--seed", type=int, default=0, help="first seed; piece k uses seed + k")
    p.add_argument("--num-pieces", type=int, default=1)
    p.add_argument("--max-patches", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/reference", help="folder for the .abc files")
    p.add_argument("--no-check", action="store_true", help="skip the music21 / abc2xml validity check")
    p.set_defaults(func=_cmd_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (NotaGenError, ValueError) as exc:
        if args.debug:
            raise
        print(f"notagen-trt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"notagen-trt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
