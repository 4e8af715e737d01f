"""Pick a backend for a model: ``auto`` takes the fastest one that can run here, in the order
fast CUDA path, TensorRT engine, ONNX Runtime CUDA, ONNX Runtime CPU, and says why it passed
over the others. Every backend gives the engine an executor (``backend.executor(rows)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import ENGINE_LAYOUT_FIX, read_manifest, step_graphs_only

CHOICES = ("auto", "fast", "tensorrt", "ort-cuda", "ort-cpu")
PRECISIONS = ("fp32", "fp16", "int8-wo", "int8")
CHECKPOINT_SUFFIXES = (".pth", ".safetensors")
GRAPH_SUFFIXES = (".onnx", ".plan")  # a file of a model directory stands for the directory


def _ort_backend():
    """The OrtBackend class; a missing onnxruntime is one line that says what to install."""
    try:
        from .onnx_backend import OrtBackend
    except ImportError:
        raise NotaGenError("ONNX Runtime is not installed: pip install 'notagen-trt[ort]' (CPU) or "
                           "'notagen-trt[ort-gpu]' (CUDA)") from None
    return OrtBackend


def check_backend(choice: str) -> None:
    if choice not in CHOICES:
        raise NotaGenError(f"unknown backend {choice!r}; choose one of {', '.join(CHOICES)}")


def select_backend(model: str | Path, choice: str = "auto", precision: str | None = None,
                   threads: int | str | None = None, device: str | None = None) -> tuple[Any, str]:
    """(backend, note): the backend object and a one-line note on why it was chosen.

    ``model`` is a model directory (ONNX export, precision variant or engine) or a checkpoint.
    ``precision`` (fp32 / fp16 / int8-wo) is what the fast CUDA path runs (fp16 when not given);
    ONNX Runtime and TensorRT run the precision their directory holds, which must match it.
    ``device`` (``cuda:N``) is the GPU the fast CUDA path runs on (default: the current one)."""
    check_backend(choice)
    if precision is not None and precision not in PRECISIONS:
        raise NotaGenError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    model = Path(model)
    if not model.exists():
        raise NotaGenError(f"{model}: no such model directory or checkpoint; pass an exported directory "
                           f"(`notagen-trt export`) or a .pth / .safetensors file")
    passed: list[str] = []
    if choice in ("auto", "fast"):
        from notagen_trt import fastpath

        reason = fastpath.unavailable_reason()
        if not reason:
            try:
                backend = fastpath.load(model, precision or "fp16", device or "cuda")
            except NotaGenError as exc:
                reason = str(exc)
            else:
                note = f"fast CUDA path ({backend.precision}{', fused Triton kernels' if backend.fused else ''})"
                rows = backend.default_rows  # read once: it measures the GPU's free memory
                if rows < backend.MAX_DEFAULT_ROWS:
                    note += f"; the GPU's free memory holds {rows} rows beside {backend.HEADROOM >> 20} MiB"
                return backend, note
        if choice == "fast":
            raise NotaGenError(f"the fast CUDA path cannot run here: {reason}")
        passed.append(f"not the fast CUDA path: {reason}")
    backend, note = _compiled_backend(_directory_of(model), choice, precision, threads)
    return backend, "; ".join([note, *passed])


def _compiled_backend(model_dir: Path, choice: str, precision: str | None,
                      threads: int | str | None) -> tuple[Any, str]:
    manifest = read_manifest(model_dir)
    holds = manifest.get("precision", "fp32")
    if precision is not None and precision != holds:
        raise NotaGenError(f"{model_dir}: holds {holds} graphs, not {precision}; make them with `notagen-trt quantize "
                           f"--model DIR --precision {precision} --out VARIANT` and pass --model VARIANT")
    if manifest.get("kind") == "engine":
        return _engine_backend(model_dir, manifest, choice, threads)
    if choice == "tensorrt":
        from . import cuda

        if cuda.local_gpu() is None:  # say so before sending anyone to build engines for it
            why = "no CUDA GPU is visible here" if cuda.find_cudart() else f"cuda-python is missing ({cuda.INSTALL})"
            raise NotaGenError(f"TensorRT runs on a CUDA GPU and {why}; use --backend ort-cpu (engines built here "
                               "with `notagen-trt build` run on a machine with one)")
        raise NotaGenError(f"{model_dir}: an ONNX model directory; build engines with `notagen-trt build --model "
                           f"{model_dir} --out DIR` and pass --model DIR")
    backend, note = _ort(model_dir, choice, threads)
    if step_graphs_only(manifest):
        note += f"; {model_dir} has the step graphs only ({ENGINE_LAYOUT_FIX}, which ONNX Runtime runs about twice as fast)"
    return backend, note


def _ort(model_dir: Path, choice: str, threads: int | str | None) -> tuple[Any, str]:
    OrtBackend = _ort_backend()
    if choice == "ort-cpu":
        return OrtBackend(model_dir, "cpu", threads), "ONNX Runtime on the CPU (asked for)"
    if choice == "ort-cuda":
        return OrtBackend(model_dir, "cuda", threads), "ONNX Runtime with CUDA (asked for)"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return OrtBackend(model_dir, "cpu", threads), "ONNX Runtime on the CPU (this ONNX Runtime has no CUDA provider)"
    try:  # onnxruntime-gpu lists CUDA even where no GPU or library lets it run
        return OrtBackend(model_dir, "cuda", threads), "ONNX Runtime with CUDA"
    except NotaGenError as exc:
        return OrtBackend(model_dir, "cpu", threads), f"ONNX Runtime on the CPU, not CUDA: {exc}"


def _directory_of(path: Path) -> Path:
    """A model is a directory (two graphs + manifest). A checkpoint is exported once to the user
    cache; a single plan or ONNX file stands for the directory whose manifest lists it."""
    if not path.is_file():
        return path
    if path.suffix in CHECKPOINT_SUFFIXES:
        from notagen_trt.demo import exported_dir

        return exported_dir(path)
    if path.suffix not in GRAPH_SUFFIXES or not (path.parent / "manifest.json").is_file():
        raise NotaGenError(f"{path}: not a model; pass a model directory (written by `notagen-trt export`, "
                           f"`quantize` or `build`), a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), or a graph "
                           f"({', '.join(GRAPH_SUFFIXES)}) listed in its directory's manifest")
    manifest = read_manifest(path.parent)
    if path.name not in {g.get("file") for g in manifest.get("graphs", {}).values()}:
        raise NotaGenError(f"{path}: not a graph listed in {path.parent / 'manifest.json'}; pass the model directory")
    return path.parent


def _engine_backend(engine_dir: Path, manifest: dict, choice: str, threads: int | str | None) -> tuple[Any, str]:
    """TensorRT when the engine matches this GPU and TensorRT version (``auto``, ``tensorrt``);
    otherwise ONNX Runtime on the ONNX directory the engine was built from, saying why."""
    why = "asked for ONNX Runtime"
    if choice in ("auto", "tensorrt"):
        from .trt_backend import TrtBackend

        try:
            backend = TrtBackend(engine_dir)
        except (NotaGenError, RuntimeError, OSError) as exc:  # bindings raise RuntimeError on driver trouble
            if choice == "tensorrt":
                raise NotaGenError(str(exc)) from None
            why = str(exc)
        else:
            engine = manifest["engine"]
            return backend, f"TensorRT ({engine['flavor']} {engine['version']}, {manifest.get('precision')})"
    onnx_dir = Path((manifest.get("onnx") or {}).get("dir") or "")
    if not (onnx_dir / "manifest.json").is_file():
        raise NotaGenError(f"{engine_dir}: cannot use the engine ({why}) and the ONNX model it was built from "
                           f"({onnx_dir}) is not there for ONNX Runtime; pass the ONNX model directory")
    backend, note = _compiled_backend(onnx_dir, "auto" if choice == "tensorrt" else choice, None, threads)
    return backend, f"{note}, not TensorRT: {why}" if choice == "auto" else note
