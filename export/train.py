"""Train a NotaGen-architecture model on ABC pieces (the toolkit's demo model is made this way).

Teacher forcing with the published loss: cross-entropy over every non-pad character of patches
1..n-1. The best checkpoint on the evaluation split is saved in the published format.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from notagen_trt.config import ModelConfig
from notagen_trt.corpus import read_pieces

from .checkpoint import save_checkpoint
from .evaluate import _batches, bits_per_char, pad_batch, windows_for
from .model import NotaGenModel


@dataclass
class TrainConfig:
    steps: int = 3000
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    dropout: float = 0.1
    batch_patches: int = 8192  # patches per step (pieces are packed up to this)
    eval_every: int = 250
    max_minutes: float = 30.0
    seed: int = 0


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model_config: ModelConfig, train_dir: str | Path, eval_dir: str | Path, out: str | Path,
          cfg: TrainConfig = TrainConfig(), device: str = "cpu", log=print) -> dict:
    """Train, keep the best model on ``eval_dir``, save it to ``out``; return a summary."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train_pieces = [t for _, t in read_pieces(train_dir)]
    eval_pieces = [t for _, t in read_pieces(eval_dir)]
    windows = windows_for(train_pieces, model_config.patch_length)
    model = NotaGenModel(model_config, dropout=cfg.dropout).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    log(f"{len(train_pieces)} training pieces -> {len(windows)} windows, {sum(map(len, windows))} patches; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters on {device}")
    best = {"bpc": float("inf"), "step": -1, "state": None}
    start, step = time.perf_counter(), 0
    while step < cfg.steps:
        rng.shuffle(windows)
        for batch in _batches(windows, cfg.batch_patches):
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg)
            model.train()
            with autocast:
                nll, count = model.char_nll(torch.as_tensor(pad_batch(batch), device=device))
            loss = nll / count
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            out_of_time = time.perf_counter() - start > cfg.max_minutes * 60
            if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
                bpc = bits_per_char(model, eval_pieces, device)
                if bpc < best["bpc"]:
                    best = {"bpc": bpc, "step": step, "state": copy.deepcopy(model.state_dict())}
                log(f"step {step}: train {loss.item() / math.log(2):.3f} bits/char, eval {bpc:.3f} "
                    f"(best {best['bpc']:.3f} @ {best['step']}), {time.perf_counter() - start:.0f} s")
            if step >= cfg.steps or out_of_time:
                break
        if time.perf_counter() - start > cfg.max_minutes * 60:
            break
    model.load_state_dict(best["state"])
    model = model.cpu().eval()
    summary = {"eval_bits_per_char": best["bpc"], "best_step": best["step"], "steps": step,
               "seconds": round(time.perf_counter() - start, 1), "train": vars(cfg)}
    save_checkpoint(model, out, epoch=step, best_epoch=best["step"], min_eval_loss=best["bpc"], train=summary)
    return summary
