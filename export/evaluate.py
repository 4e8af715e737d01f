"""Teacher-forced bits per character of a PyTorch model on ABC pieces, and a unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import torch

from notagen_trt.runtime.codec import encode_windows

from .model import NotaGenModel


def windows_for(pieces: list[str], patch_length: int) -> list[np.ndarray]:
    return [w for text in pieces for w in encode_windows(text, patch_length)]


@torch.inference_mode()
def bits_per_char(model: NotaGenModel, pieces: list[str], device: str = "cpu", batch_patches: int = 4096) -> float:
    """Mean -log2 p(char) over every non-pad character of every predicted patch."""
    model = model.eval().to(device)
    windows = sorted(windows_for(pieces, model.config.patch_length), key=len)
    nll, count = 0.0, 0
    for batch in _batches(windows, batch_patches):
        n, c = model.char_nll(torch.as_tensor(pad_batch(batch), device=device))
        nll, count = nll + n.item(), count + int(c.item())
    return nll / count / math.log(2)


def pad_batch(windows: list[np.ndarray]) -> np.ndarray:
    """Right-pad windows with all-pad patches; pad targets are masked out of the loss and
    causal attention keeps them from changing real positions."""
    longest = max(len(w) for w in windows)
    out = np.zeros((len(windows), longest, windows[0].shape[1]), dtype=np.int64)
    for i, w in enumerate(windows):
        out[i, : len(w)] = w
    return out


def _batches(windows: list[np.ndarray], batch_patches: int):
    batch: list[np.ndarray] = []
    for w in windows:
        if batch and (len(batch) + 1) * max(len(w), len(batch[-1])) > batch_patches:
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch
