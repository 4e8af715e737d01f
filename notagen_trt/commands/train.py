"""`notagen-trt train`: train a NotaGen-architecture model (how the demo model was made)."""

from __future__ import annotations

import argparse
import json

from . import devices
from .devices import torch_device


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from notagen_trt.config import ModelConfig
    from notagen_trt.corpus import default_split
    from notagen_trt.errors import NotaGenError
    from notagen_trt.export.train import TrainConfig, train
    from notagen_trt.files import prepare_out_dir

    # A checkpoint file: its folder must take it, and checked before minutes of training.
    out = Path(args.out)
    if out.is_dir():
        raise NotaGenError(f"{out}: is a folder; --out names the checkpoint file to write, e.g. {out / 'model.pth'}")
    device = torch_device(args.device)  # before minutes of training, and before a folder is made
    prepare_out_dir(out.parent, "train", fix="pass --out in a folder you can write")
    config = ModelConfig(
        hidden_size=args.hidden,
        patch_num_layers=args.patch_layers,
        char_num_layers=args.char_layers,
        patch_length=args.patch_length,
    )
    cfg = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        dropout=args.dropout,
        batch_patches=args.batch_patches,
        max_minutes=args.max_minutes,
        seed=args.seed,
        eval_every=args.eval_every,
    )
    summary = train(
        config, args.data or default_split("train"), args.eval or default_split("calib"), args.out, cfg, device=device
    )
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a NotaGen-architecture model on ABC pieces (the demo model)")
    p.add_argument("--data", help="folder of training .abc pieces (default: the shipped corpus's train split)")
    p.add_argument("--eval", help="folder of .abc pieces to pick the best step on (default: calib split)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pth, published format)")
    p.add_argument("--hidden", type=int, default=192, help="hidden size (default 192, the demo model's)")
    p.add_argument("--patch-layers", type=int, default=5, help="patch-level layers (default 5)")
    p.add_argument("--char-layers", type=int, default=2, help="char-level layers (default 2)")
    p.add_argument("--patch-length", type=int, default=512, help="patches of context (default 512)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps at most (default 3000)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout (default 0.1)")
    p.add_argument("--batch-patches", type=int, default=8192, help="patches per step (default 8192)")
    p.add_argument("--eval-every", type=int, default=250,
                   help="steps between evaluations on --eval; the best is kept (default 250)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop after this long (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batches (default 0)")
    p.add_argument("--device", default="auto", help=f"{devices.HELP} (default auto)")
    p.set_defaults(func=_cmd_train)
