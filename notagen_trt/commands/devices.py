"""``--device`` of the commands that run PyTorch (reference, train): checked before any work, so
a machine without the GPU asked for gets one line, not a traceback."""

from __future__ import annotations

from notagen_trt.errors import NotaGenError

HELP = "auto (CUDA when PyTorch sees a GPU), cpu, cuda or cuda:N"


def torch_device(name: str) -> str:
    """The device ``name`` stands for here (auto resolved); NotaGenError when it cannot run."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise NotaGenError(f"--device {name}: not a device here; use {HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NotaGenError(f"--device {name}: PyTorch sees no CUDA GPU here (a CPU-only build of torch, or no "
                               "driver); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NotaGenError(f"--device {name}: no such GPU ({torch.cuda.device_count()} visible)")
    return name
