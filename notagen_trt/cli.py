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
        validity = abcio.check(abc)
        rows.append({"seed": seed, "file": str(path), "patches": piece.patches, "stop": piece.stop_reason,
                     "seconds": round(piece.seconds, 2), "music21": validity.music21,
                     "abc2xml": validity.abc2xml, "error": validity.error})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"pieces": len(rows), "music21_ok": sum(r["music21"] for r in rows),
                      "abc2xml_ok": sum(r["abc2xml"] for r in rows), "mode": args.mode}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notagen-trt", description="Compile NotaGen music models into fast inference engines and run them.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

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
