"""What a service runs (model, backend, rows, GPUs, limits), shared by `notagen-trt serve` and the
Ray Serve replicas, and loading its engines: one per GPU on the fast CUDA path, else one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from notagen_trt.errors import NotaGenError
from notagen_trt.files import os_error_line

from .pool import EnginePool

# Rows (pieces in flight per engine; new requests join the running batch at the next patch): by
# default the backend's own (runtime/engine.py load_engine), 16 on a GPU and 4 on a CPU, and never
# fewer than 4 (a backend that steps its rows one after another still serves four clients at
# once). A Ray deployment needs the number before any replica loads its backend: these figures.
GPU_ROWS, CPU_ROWS = 16, 4
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_BODY = 64 * 1024  # a piece request is a few hundred bytes
DEFAULT_GRACE = 20.0  # seconds running pieces get on shutdown (a container's stop timeout is often 30)


@dataclass(frozen=True)
class ServeSettings:
    model: str | None = None  # default: the demo model
    backend: str = "auto"
    precision: str | None = None
    rows: int | None = None  # default: the backend's (GPU_ROWS / CPU_ROWS)
    threads: int | None = None
    gpus: str = "all"  # all | none | 0,1,...
    max_queue: int = DEFAULT_MAX_QUEUE
    max_patches: int | None = None  # a cap on every piece (requests may ask for fewer)
    max_body: int = DEFAULT_MAX_BODY
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("rows", "threads", "max_queue", "max_body"):  # ONNX Runtime takes 0 threads as every core
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise NotaGenError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_patches is not None and self.max_patches < 1:
            raise NotaGenError(f"max-patches must be at least 1, got {self.max_patches}")
        if self.api_key is not None and not self.api_key:
            raise NotaGenError("the API key is empty")

    @classmethod
    def from_dict(cls, values: dict) -> "ServeSettings":
        """From ``serve run ... key=value`` arguments (strings) or a dict of typed values."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise NotaGenError(f"unknown setting {unknown[0]!r}; valid: {', '.join(names)}")
        ints = {"rows", "threads", "max_queue", "max_patches", "max_body"}
        try:
            typed = {k: int(v) if k in ints and v is not None else v for k, v in values.items()}
        except ValueError as exc:
            raise NotaGenError(f"a numeric setting is not a number: {exc}") from None
        return cls(**typed)


def read_api_key(path: str | Path) -> str:
    """The key in a file (its first line, spaces stripped): kept out of argv and shell history."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise NotaGenError(f"--api-key-file: {os_error_line(exc)}") from None
    if not key or not key[0].strip():
        raise NotaGenError(f"{path}: the API key file is empty")
    return key[0].strip()


def gpu_count() -> int:
    """CUDA GPUs visible to PyTorch (the fast path, the one backend that runs one engine per GPU)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def engine_devices(gpus: str, count: Callable[[], int] = gpu_count) -> list[str | None]:
    """The device of each engine: ``none`` is one engine on the CPU ([``cpu``]); ``all`` one per
    visible GPU ([None]: the default device, when there are fewer than two); ``0,2`` those GPUs."""
    text = gpus.strip().lower()
    if text == "none":
        return ["cpu"]
    n = count()
    if text == "all":
        return [f"cuda:{i}" for i in range(n)] if n > 1 else [None]
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise NotaGenError(f"--gpus {gpus!r}: give all, none or GPU numbers such as 0,1") from None
    if len(set(ids)) != len(ids):
        raise NotaGenError(f"--gpus {gpus!r}: a GPU is named twice")
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise NotaGenError(f"--gpus {gpus!r}: no GPU {bad[0]} here ({n} visible" +
                           ("; --gpus none serves on the CPU)" if n == 0 else f": 0 to {n - 1})"))
    return [f"cuda:{i}" for i in ids]


def load_pool(settings: ServeSettings, log: Callable[[str], None] = lambda _: None) -> EnginePool:
    """The engines a service runs, started, behind one pool."""
    from notagen_trt.runtime.backends import check_backend
    from notagen_trt.runtime.engine import load_engine

    backend = settings.backend
    check_backend(backend)  # a typo is named as one, not taken for a GPU backend
    devices = engine_devices(settings.gpus) if backend != "ort-cpu" else ["cpu"]
    if devices == ["cpu"]:
        if backend not in ("auto", "ort-cpu"):
            raise NotaGenError(f"--gpus none runs on the CPU; --backend {backend} needs a GPU (use ort-cpu)")
        backend = "ort-cpu"
    engines = []
    try:
        for device in devices:
            engine = load_engine(settings.model, backend, settings.precision, settings.rows, settings.threads,
                                 None if device == "cpu" else device, at_least=CPU_ROWS)
            engines.append(engine)
            if len(devices) > 1 and not engine.executor.name.startswith("fast-"):
                raise NotaGenError(f"one engine per GPU needs the fast CUDA path, not {engine.executor.name}; "
                                   "pass --gpus 0 (one GPU), or run one replica per GPU with --ray")
            log(f"engine {len(engines) - 1}{f' on {device}' if device else ''}: {engine.note}")
        return EnginePool(engines, settings.max_queue)
    except BaseException:
        for engine in engines:
            engine.close()
        raise
