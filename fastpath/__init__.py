"""The fast CUDA path: PyTorch + Triton fused decode kernels + one CUDA graph per patch.

A backend of the product like ONNX Runtime or TensorRT (``FastBackend.executor`` gives the
engine its rows), loaded on demand: it is the one backend that imports torch.
"""

from __future__ import annotations

import gc
from pathlib import Path

from notagen_trt.errors import NotaGenError


def unavailable_reason() -> str:
    """'' when the fast CUDA path can run here, else why not (one line)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install 'notagen-trt[export]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return ""


def load(model: str | Path, precision: str = "fp16", device: str = "cuda"):
    """A FastBackend for a model directory (its manifest names the checkpoint) or a checkpoint."""
    import torch

    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.manifest import source_checkpoint

    from .executor import PRECISIONS, FastBackend, out_of_memory

    if precision not in PRECISIONS:
        raise NotaGenError(f"the fast CUDA path runs {', '.join(PRECISIONS)}, not {precision!r}")
    path = Path(model)
    checkpoint = path if path.is_file() else source_checkpoint(path)
    network = load_model(checkpoint)
    parameters = sum(p.numel() for p in network.parameters())
    try:
        return FastBackend(network, device, precision)
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
        if not out_of_memory(exc):
            raise
    # Cleaned up here, once the exception (whose frames hold the half-made backend) is gone.
    del network
    gc.collect()  # what reached the GPU before it ran out, so that a fallback backend finds it free
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    weights = parameters * {"fp32": 4, "fp16": 2}.get(precision, 1)
    smaller = {"fp32": "--precision fp16 or int8-wo, ", "fp16": "--precision int8-wo, "}.get(precision, "")
    raise NotaGenError(f"{checkpoint}: its {precision} weights (about {weights / 2**30:.2f} GiB) do not fit on {device} "
                       f"({free / 2**30:.2f} of {total / 2**30:.2f} GiB free); try {smaller}another GPU, or stop other "
                       "work on this one")
