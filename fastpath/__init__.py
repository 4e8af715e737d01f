"""The fast CUDA path: PyTorch + Triton fused decode kernels + one CUDA graph per patch.

A backend of the product like ONNX Runtime or TensorRT (``FastBackend.executor`` gives the
engine its rows), loaded on demand: it is the one backend that imports torch.
"""

from __future__ import annotations

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
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.manifest import source_checkpoint

    from .executor import PRECISIONS, FastBackend

    if precision not in PRECISIONS:
        raise NotaGenError(f"the fast CUDA path runs {', '.join(PRECISIONS)}, not {precision!r}")
    path = Path(model)
    checkpoint = path if path.is_file() else source_checkpoint(path)
    return FastBackend(load_model(checkpoint), device, precision)
