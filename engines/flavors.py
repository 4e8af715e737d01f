"""The two TensorRT flavours behind one small adapter: full TensorRT (``tensorrt``, 10.x / 11.x)
and TensorRT for RTX (``tensorrt_rtx``). Both share the builder, parser and runtime API; what
differs is here and nowhere else: the module to import, how target GPUs are chosen, and whether
the timing cache does anything.

- Full TensorRT builds for the GPU it runs on (a GPU is required); ``hardware_compatibility_level``
  AMPERE_PLUS widens that to every Ampere-or-newer GPU.
- TensorRT-RTX compiles ahead of time for a list of compute capabilities, with or without a GPU
  (``num_compute_capabilities`` + ``set_compute_capability``), and specialises the kernels on the
  user's GPU at first load. Its timing cache calls are no-ops since RTX 1.2, so it gets none.
No torch, and no import of either module (or of cuda-python) at import time: the runtime and
CPU-only installs read this.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from notagen_trt.errors import NotaGenError
from notagen_trt.runtime.cuda import INSTALL, find_cudart, local_gpu

# Compute capabilities TensorRT-RTX 1.7 compiles for (its ComputeCapability enum) and the default
# target list when the build machine has no usable GPU: the consumer RTX generations
# (Ampere 8.6, Ada 8.9, Blackwell 12.0).
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
RTX_DEFAULT_TARGETS = ("8.6", "8.9", "12.0")


@dataclass(frozen=True)
class Flavor:
    name: str  # "trt" | "rtx"
    title: str
    modules: tuple[str, ...]  # import names, first found wins
    install: str  # the pip line that provides it
    timing_cache: bool  # the builder's timing cache is honoured

    def load(self) -> ModuleType:
        """The flavour's Python module, or a NotaGenError with the install line."""
        for name in self.modules:
            try:
                return importlib.import_module(name)
            except ImportError:
                continue
        raise NotaGenError(f"{self.title} is not installed (no module {' or '.join(self.modules)}); {self.install}")

    def version(self, trt: ModuleType) -> str:
        return str(trt.__version__)

    def logger(self, trt: ModuleType) -> Any:
        """A TensorRT logger writing warnings and errors to stderr. TensorRT's own ``Logger``
        prints to stdout, where it would mix into the JSON of ``build --json``."""
        return _stderr_logger(trt, self.name)

    def network_flags(self, trt: ModuleType) -> int:
        """Strongly typed networks: precision comes from the ONNX, never from builder flags (the
        FP16/INT8 flags and calibrators are gone in TensorRT 11). TensorRT 11 networks are always
        strongly typed; where the flag still exists it is set explicitly."""
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    def set_targets(self, trt: ModuleType, config: Any, requested: list[str] | None, gpu: dict | None) -> dict:
        """Point ``config`` at the target GPUs; return the manifest's ``targets`` entry."""
        if self.name == "rtx":
            return _rtx_targets(trt, config, requested, gpu)
        return _trt_targets(trt, config, requested, gpu)


def _stderr_logger(trt: ModuleType, label: str) -> Any:
    limit = int(trt.ILogger.Severity.WARNING)

    class StderrLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= limit:  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
                print(f"[{label}] [{str(severity).rsplit('.', 1)[-1]}] {msg}", file=sys.stderr, flush=True)

    return StderrLogger()


def _rtx_targets(trt: ModuleType, config: Any, requested: list[str] | None, gpu: dict | None) -> dict:
    if requested:
        ccs = list(dict.fromkeys(requested))
    elif gpu and gpu["compute_capability"] in RTX_TARGETS:
        ccs = [gpu["compute_capability"]]
    else:
        ccs = list(RTX_DEFAULT_TARGETS)
    bad = [cc for cc in ccs if cc not in RTX_TARGETS]
    if bad:
        raise NotaGenError(f"TensorRT-RTX cannot target compute capability {', '.join(bad)}; choose from "
                           f"{', '.join(RTX_TARGETS)} (--compute-capability 8.6,8.9)")
    config.num_compute_capabilities = len(ccs)
    for i, cc in enumerate(ccs):
        if not config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i):
            raise NotaGenError(f"TensorRT-RTX refused compute capability {cc} as build target {i}")
    return {"compute_capabilities": ccs, "hardware_compatibility": None}


def _trt_targets(trt: ModuleType, config: Any, requested: list[str] | None, gpu: dict | None) -> dict:
    if gpu is None:
        raise NotaGenError("full TensorRT builds for the GPU it runs on and no CUDA GPU is visible here; build on "
                           "the target GPU (Dockerfile.trt), or use --flavor rtx, which builds without one")
    if requested == ["ampere+"]:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        return {"compute_capabilities": ["ampere+"], "hardware_compatibility": "ampere+"}
    if requested and requested != [gpu["compute_capability"]]:
        raise NotaGenError(f"full TensorRT can only target this GPU ({gpu['name']}, compute capability "
                           f"{gpu['compute_capability']}), not {', '.join(requested)}; build on that GPU, pass "
                           "--compute-capability ampere+, or use --flavor rtx")
    return {"compute_capabilities": [gpu["compute_capability"]], "hardware_compatibility": None}


FLAVORS: dict[str, Flavor] = {
    "trt": Flavor("trt", "TensorRT", ("tensorrt",), "pip install 'notagen-trt[trt]' (NVIDIA's index) or use "
                  "Dockerfile.trt", timing_cache=True),
    "rtx": Flavor("rtx", "TensorRT-RTX", ("tensorrt_rtx", "tensorrt_rtx_bindings"),
                  "pip install 'notagen-trt[rtx]'", timing_cache=False),
}


def get_flavor(name: str) -> Flavor:
    if name not in FLAVORS:
        raise NotaGenError(f"unknown TensorRT flavour {name!r}; choose one of {', '.join(FLAVORS)}")
    return FLAVORS[name]


def unusable_reason(flavor: str) -> str | None:
    """Why plans of ``flavor`` cannot run on this machine, or None: no cuda-python, no GPU, the
    flavour not installed, or (RTX) a GPU its runtime does not run on, such as datacenter Hopper."""
    fl = get_flavor(flavor)
    if find_cudart() is None:
        return f"cuda-python is not installed ({INSTALL})"
    gpu = local_gpu()
    if gpu is None:
        return "no CUDA GPU is visible (cuda-python sees none)"
    try:
        fl.load()
    except NotaGenError as exc:
        return f"{exc} (GPU here: {gpu['name']})"
    if fl.name == "rtx" and gpu["compute_capability"] not in RTX_TARGETS:
        return (f"TensorRT-RTX does not run on compute capability {gpu['compute_capability']} ({gpu['name']}); "
                f"it runs on {', '.join(RTX_TARGETS)}")
    return None
