"""`notagen-trt eval`: bits per character on held-out ABC (teacher forcing)."""

from __future__ import annotations

import argparse
import json

from notagen_trt.demo import demo_checkpoint


def _cmd_eval(args: argparse.Namespace) -> int:
    from notagen_trt.corpus import default_split, read_pieces
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.evaluate import bits_per_char, unigram_bits_per_char

    model = load_model(args.checkpoint or demo_checkpoint())
    data = [t for _, t in read_pieces(args.data or default_split("heldout"))]
    result = {"bits_per_char": round(bits_per_char(model, data), 4)}
    if args.baseline:
        train = [t for _, t in read_pieces(default_split("train"))]
        result["unigram_bits_per_char"] = round(unigram_bits_per_char(train, data, model.config.patch_length), 4)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="bits per character on held-out ABC (teacher forcing)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the demo model)")
    p.add_argument("--data", help=".abc file or folder (default: the shipped corpus's heldout split)")
    p.add_argument("--baseline", action="store_true", help="also report a character-unigram baseline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)
