"""cuda-python, imported in one place: the TensorRT runtime's device memory and streams, and the
GPU probe that builds, engine checks and tests use. Imported on first use, so this module loads on
a machine without cuda-python or a GPU."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from notagen_trt.errors import NotaGenError

INSTALL = "pip install 'notagen-trt[rtx]' or '[trt]'"


def find_cudart() -> ModuleType | None:
    """cuda-python's runtime module, or None where cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


def cudart() -> ModuleType:
    """cuda-python's runtime module, or a NotaGenError with the install line."""
    module = find_cudart()
    if module is None:
        raise NotaGenError(f"cuda-python is not installed: {INSTALL}")
    return module


def ok(result: Any) -> Any:
    """Unwrap a cuda-python (err, *values) tuple; raise on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise NotaGenError(f"CUDA error {int(err)} ({err}); check the driver and GPU")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def local_gpu() -> dict | None:
    """{'name', 'compute_capability'} of CUDA device 0, or None where there is no driver, no
    device or no cuda-python (a CPU-only build machine)."""
    module = find_cudart()
    if module is None:
        return None
    try:
        err, count = module.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return None
        err, props = module.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
    except Exception:  # a broken driver install reports itself in many ways; treat it as no GPU
        return None
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}
