"""Pick a backend for a model directory: ``auto`` takes the fastest one that can run here and
says why it passed over the others."""

from __future__ import annotations

from pathlib import Path

from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import read_manifest

CHOICES = ("auto", "ort-cuda", "ort-cpu")


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise NotaGenError("ONNX Runtime is not installed: pip install 'notagen-trt[ort]' (CPU) or "
                           "'notagen-trt[ort-gpu]' (CUDA)") from None
    return ort.get_available_providers()


def select_backend(model_dir: str | Path, choice: str = "auto", threads: int | None = None):
    """(backend, note): the backend object and a one-line note on why it was chosen."""
    if choice not in CHOICES:
        raise NotaGenError(f"unknown backend {choice!r}; choose one of {', '.join(CHOICES)}")
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest.get("kind") != "onnx":
        raise NotaGenError(f"{model_dir}: a {manifest.get('kind')!r} directory needs a TensorRT backend, which "
                           "this build cannot run; pass an exported ONNX model directory")
    from .onnx_backend import OrtBackend

    if choice == "ort-cpu":
        return OrtBackend(model_dir, "cpu", threads), "ONNX Runtime on the CPU (asked for)"
    has_cuda = "CUDAExecutionProvider" in _ort_providers()
    if choice == "ort-cuda" or has_cuda:
        return OrtBackend(model_dir, "cuda", threads), "ONNX Runtime with CUDA"
    return OrtBackend(model_dir, "cpu", threads), "ONNX Runtime on the CPU (this ONNX Runtime has no CUDA provider)"
