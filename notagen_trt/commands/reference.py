"""`notagen-trt reference`: the PyTorch reference generator (published or cached mode)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from notagen_trt.demo import demo_checkpoint
from notagen_trt.files import prepare_out_dir, refuse_model_dir, write_atomic

from . import devices
from .devices import torch_device


def _cmd_reference(args: argparse.Namespace) -> int:
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.reference import ReferenceBackend
    from notagen_trt.runtime import abcio
    from notagen_trt.runtime.outputs import free_stem
    from notagen_trt.runtime.piece import GenerationConfig
    from notagen_trt.runtime.postprocess import postprocess
    from notagen_trt.runtime.prompts import resolve_prompt

    prompt = resolve_prompt(args.period, args.composer, args.instrumentation)
    device = torch_device(args.device)  # a GPU that is not here fails before the output folder is made
    out = prepare_out_dir(Path(args.out), "reference")  # before the model loads
    refuse_model_dir(out, "reference")
    backend = ReferenceBackend(load_model(args.checkpoint or demo_checkpoint()), args.mode, device)
    rows = []
    for seed in range(args.seed, args.seed + args.num_pieces):
        piece = backend.generate(prompt, GenerationConfig(seed=seed, max_patches=args.max_patches))
        abc = postprocess(piece.text)
        path = out / f"{free_stem(out, f'piece_seed{seed}', abc)}.abc"  # never over a different earlier piece
        write_atomic(path, abc)
        rows.append(
            {
                "seed": seed,
                "file": str(path),
                "patches": piece.patches,
                "stop": piece.stop_reason,
                "seconds": round(piece.seconds, 2),
            }
        )
        if not args.no_check:
            validity = abcio.check(abc)
            rows[-1].update(music21=validity.music21, abc2xml=validity.abc2xml, error=validity.error)
        print(json.dumps(rows[-1]), flush=True)
    summary = {"pieces": len(rows), "mode": args.mode}
    if not args.no_check:
        summary.update(music21_ok=sum(r["music21"] for r in rows), abc2xml_ok=sum(r["abc2xml"] for r in rows))
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .prompts import add_prompt_arguments

    p = sub.add_parser("reference", help="generate with the PyTorch reference generator (published or cached)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the demo model)")
    p.add_argument("--mode", choices=["published", "cached"], default="cached",
                   help="cached (default): with a KV cache, the pieces the engine must equal; published: the "
                        "published loop, no cache (the speed baseline, same pieces, slower)")
    add_prompt_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="first seed; piece k uses seed + k")
    p.add_argument("--num-pieces", type=int, default=1, help="pieces, one per seed (default 1)")
    p.add_argument("--max-patches", type=int, default=None, help="stop a piece after this many patches (default: none)")
    p.add_argument("--device", default="cpu", help=f"{devices.HELP} (default cpu)")
    p.add_argument("--out", default="out/reference", help="folder for the .abc files")
    p.add_argument("--no-check", action="store_true", help="skip the music21 / abc2xml validity check")
    p.set_defaults(func=_cmd_reference)
