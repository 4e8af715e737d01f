"""ONNX Runtime backend over an exported model directory (numpy + onnxruntime, no torch).

CPU: the KV caches are numpy arrays fed back as the next call's ``past_key_values``; a patch's
characters are sampled in one call of a graph built around the char decoder (patch_sampler.py).
CUDA: IOBinding keeps ``present`` tensors on the GPU and binds them as the next ``past`` inputs,
so only token ids, the patch hidden state and logits cross the bus. Both decoders' InferenceSession
objects are shared by every session of a backend (``run`` is thread-safe in ONNX Runtime).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from notagen_trt.config import BOS_ID, HEAD_DIM, VOCAB_SIZE, ModelConfig
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import graph_io, model_config, read_manifest

from .cores import usable_cores
from .executor import Executor, SideBySide, StepExecutor, StepSession
from .sampling import SamplingParams

Device = Literal["cpu", "cuda"]


class _Once:
    """A value built on first use, exactly once even when threads ask for it together."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build, self._value, self._lock = build, None, threading.Lock()

    def get(self) -> Any:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value


class _Graph:
    """One decoder graph: its InferenceSession and its IO (``io``, from the manifest). A ``lazy``
    graph loads its session on first use (CPU generation never steps the char decoder on its own)."""

    def __init__(self, model_dir: Path, manifest: dict[str, Any], name: str, device: Device,
                 threads: int | None, lazy: bool = False) -> None:
        self.io = graph_io(manifest, name, model_dir)
        self.path = self.io.path(model_dir)
        self._device, self._threads = device, threads
        self._session = _Once(self._load)
        if not lazy:
            self._session.get()

    @property
    def session(self) -> ort.InferenceSession:
        return self._session.get()

    def _load(self) -> ort.InferenceSession:
        path, cuda = self.path, self._device == "cuda"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(path), session_options(self._threads, cpu=not cuda), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NotaGenError(f"{path}: ONNX Runtime could not load the graph ({exc}); re-export the model") from None
        if cuda and "CUDAExecutionProvider" not in session.get_providers():
            raise NotaGenError(f"{path}: ONNX Runtime fell back to the CPU (CUDA or cuDNN libraries missing?); "
                               "install onnxruntime-gpu matching your CUDA version, or use --backend ort-cpu")
        return session


def session_options(threads: int | None, spin: bool = False, cpu: bool = True) -> ort.SessionOptions:
    """``threads`` intra-op threads (None: ONNX Runtime's default, every core). More than one spin
    between ops only where ``spin``: a lone call that has every core to itself (AUTO on a model
    whose ops split). There a sleeping thread wakes late for each of the call's ~1,000 nodes: a
    NotaGen-small int8-wo patch on two threads of a 2-core Xeon took 0.58x one thread's time
    spinning, 0.76x not (interleaved rounds). Elsewhere calls may share the cores, which spinning
    threads would take from them.

    On a CPU (``cpu``) without ONNX Runtime's memory arena: its nodes' small buffers then come
    from malloc, which is quicker than the arena's locked bins, above all jemalloc's per-thread
    caches (the command runs on it: ``notagen_trt.allocator``). A demo int8-wo patch at context
    256 took 0.91x / 0.93x the arena's time on jemalloc, 0.95x on glibc's malloc, NotaGen-small's
    0.96x (2-core Xeon, interleaved rounds; the pieces the same)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = not cpu
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads == 1 or spin else "0")
    return opts


AUTO = "auto"  # threads: one per call, side by side; every core for one call where its ops are big enough
SPLIT_HIDDEN = 512  # hidden size from which a call's ops gain from more than one thread (see below)


class OrtBackend:
    """A backend (see executor.py) running the exported ONNX graphs in ONNX Runtime."""

    @property
    def default_rows(self) -> int:
        """Engine-ready graphs: 4 rows batched in each call (16 on CUDA). Step graphs: on the CPU a
        row per core (up to 4) when each call runs on one thread; CUDA: one."""
        if self.manifest.get("layout") == "engine":
            return 16 if self.device == "cuda" else 4
        return min(4, usable_cores()) if self._core_each else 1

    def __init__(self, model_dir: str | Path, device: Device = "cpu", threads: int | str | None = None) -> None:
        """``threads``: intra-op threads per call; None: ONNX Runtime's default; ``AUTO``: one per
        call on the step graphs, and on the engine-ready graphs one per call side by side, or every
        row in one call on every core when the model's ops are big enough to split (``executor``)."""
        if device not in ("cpu", "cuda"):
            raise NotaGenError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise NotaGenError("ONNX Runtime has no CUDAExecutionProvider in this install (available: "
                               f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu, or use "
                               "--backend ort-cpu")
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir, expect_kind="onnx")
        self.manifest, self.model_dir = manifest, model_dir
        self.config = model_config(manifest)
        self.device = device
        self.name = f"onnxruntime-{device}"
        self._threads = threads
        threads = self._step_threads
        # On a CPU the step graphs load on first use: generation on the engine-ready graphs never
        # steps them (the patch decoder's session was a quarter of NotaGen-small's start-up), and
        # on the step graphs the char decoder runs inside the patch sampler.
        engine_cpu = device == "cpu" and manifest.get("layout") == "engine"
        self.patch = _Graph(model_dir, manifest, "patch_decoder", device, threads, lazy=engine_cpu)
        self.char = _Graph(model_dir, manifest, "char_decoder", device, threads, lazy=device == "cpu")
        self._patch_sampler = _Once(self._load_patch_sampler)

    def patch_sampler(self) -> ort.InferenceSession:
        """The one-call patch sampler (CPU), built on first use; sessions in threads share it."""
        return self._patch_sampler.get()

    def _load_patch_sampler(self) -> ort.InferenceSession:
        try:
            from . import patch_sampler
        except ImportError:
            raise NotaGenError("the ONNX Runtime CPU backend needs the onnx package: pip install "
                               "'notagen-trt[ort]'") from None
        path = self.char.path
        try:
            return patch_sampler.session(path, self.char.io.num_layers, self.config.num_heads,
                                         session_options(self._step_threads))
        except NotaGenError:
            raise
        except Exception as exc:  # onnxruntime and protobuf raise their own exception types
            raise NotaGenError(f"{path}: could not build the one-call patch sampler from this graph ({exc}); "
                               "re-export the model, or report it with the ONNX Runtime version") from None

    @property
    def _step_threads(self) -> int | None:
        return 1 if self._threads == AUTO else self._threads

    @property
    def _core_each(self) -> bool:
        """Calls run on a core each, side by side (one thread per call, or AUTO, on a CPU)."""
        return self.device == "cpu" and self._threads in (1, AUTO)

    def new_session(self) -> "_Session":
        return CudaSession(self) if self.device == "cuda" else CpuSession(self)

    def executor(self, rows: int = 1) -> Executor:
        if self.manifest.get("layout") == "engine":
            # One call per patch for every row on the engine-ready graphs (graph_executor.py).
            from .graph_executor import GraphExecutor

            # On a CPU with one call per core, calls side by side, the rows split between them
            # (measured on 2 cores: see the README). With AUTO, a model whose ops are big enough
            # to split runs every row in one call on every core instead: on 2 cores NotaGen-small
            # (int8-wo) took 0.64x / 0.80x / 0.65x the time of two 1-thread calls side by side for
            # 1 / 2 / 4 pieces in flight (the weights are read once a patch, and a lone piece gets
            # both cores); the demo's small ops took 1.13x-1.28x, so it stays side by side.
            cores = min(rows, usable_cores()) if self._core_each else 1
            threads, spin = self._step_threads, False
            if self._core_each and self._threads == AUTO and self.config.hidden_size >= SPLIT_HIDDEN:
                cores, threads, spin = 1, usable_cores(), True  # the one call has the cores to itself

            def part(n: int) -> GraphExecutor:
                return GraphExecutor(self.model_dir, self.manifest, self.config, n,
                                     session_options(threads, spin, cpu=self.device == "cpu"), self.device)

            if cores < 2:
                return part(rows)
            sizes = [rows // cores + (i < rows % cores) for i in range(cores)]
            parts = [part(n) for n in sizes]
            return SideBySide(parts[0].name, parts)
        # CPU sessions of one intra-op thread run rows side by side, a core each; sessions that
        # use every core themselves (the default) step rows in turn.
        workers = min(rows, usable_cores()) if self._core_each else 1
        return StepExecutor(self.name, self.config, [self.new_session() for _ in range(rows)], workers)


Past = list  # np.ndarray on the CPU path, ort.OrtValue (device memory) on the CUDA path


class _Session(StepSession):
    """One piece's decoding state; subclasses decide where the KV caches live (``_run``)."""

    def __init__(self, backend: OrtBackend) -> None:
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self._patch_past: Past | None = None
        self._char_past: Past = []

    def _run(self, graph: _Graph, head: dict[str, np.ndarray], past: Past) -> tuple[np.ndarray, Past]:
        raise NotImplementedError

    # StepSession: one piece, batch 1.
    def extend(self, patches: np.ndarray) -> np.ndarray:
        """patches [k, 16] -> the last patch's hidden state, [H]."""
        g = self.backend.patch
        past = self._patch_past or [empty_past(self.backend.config, 1)] * len(g.io.past_names)
        hidden, self._patch_past = self._run(g, {g.io.head_names[0]: _ids(patches)[None]}, past)
        return hidden[0, -1]

    def char_start(self, hidden: np.ndarray, tokens: list[int]) -> np.ndarray:
        """hidden [H], tokens (bos placeholder + forced prefix) -> next logits [128]."""
        g = self.backend.char
        ids_name, hidden_name = g.io.head_names
        head = {ids_name: _ids(tokens)[None], hidden_name: np.asarray(hidden, dtype=np.float32)[None]}
        logits, self._char_past = self._run(g, head, [empty_past(self.backend.config, 1)] * len(g.io.past_names))
        return logits[0, -1]

    def char_step(self, token: int) -> np.ndarray:
        """One more character -> next logits [128]; patch_hidden is ignored after position 0."""
        g = self.backend.char
        ids_name, hidden_name = g.io.head_names
        zero = np.zeros((1, self.backend.config.hidden_size), dtype=np.float32)
        logits, self._char_past = self._run(g, {ids_name: _ids([[token]]), hidden_name: zero}, self._char_past)
        return logits[0, -1]


def empty_past(config: ModelConfig, batch: int) -> np.ndarray:
    """A zero-length KV cache, [batch, heads, 0, 64]: the ``past`` of a first call."""
    return np.zeros((batch, config.num_heads, 0, HEAD_DIM), dtype=np.float32)


def _ids(values: np.ndarray | list[int] | list[list[int]]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


class CpuSession(_Session):
    """Growing numpy KV caches on the host."""

    def _run(self, graph: _Graph, head: dict[str, np.ndarray], past: Past) -> tuple[np.ndarray, Past]:
        out, *present = graph.session.run(graph.io.output_names, {**head, **dict(zip(graph.io.past_names, past))})
        return out, present

    def sample_patch(self, hidden: np.ndarray, prefix: list[int], uniforms: np.ndarray,
                     params: SamplingParams) -> list[int]:
        """The patch in one call: the char decoder from bos + ``prefix``, then one draw per
        uniform of ``uniforms[len(prefix):]``, as ``sample`` would draw them."""
        feeds = {"patch_hidden": np.asarray(hidden, dtype=np.float32)[None], "tokens": _ids([BOS_ID, *prefix])[None],
                 "uniforms": np.asarray(uniforms[len(prefix):], dtype=np.float64),
                 "top_k": np.asarray(params.top_k or VOCAB_SIZE, dtype=np.int64),
                 "top_p": np.asarray(params.top_p, dtype=np.float64),
                 "temperature": np.asarray(params.temperature, dtype=np.float64)}
        return [*prefix, *self.backend.patch_sampler().run(None, feeds)[0].tolist()]


class CudaSession(_Session):
    """KV caches stay on the GPU: each call's ``present`` outputs are bound to device memory and
    bound again, as OrtValues, as the next call's ``past`` inputs (no host round trip). Only
    ids, the patch hidden state, logits and the (empty) first past cross the bus."""

    DEVICE_ID = 0

    def _run(self, graph: _Graph, head: dict[str, np.ndarray], past: Past) -> tuple[np.ndarray, Past]:
        binding = graph.session.io_binding()
        for name, value in head.items():
            binding.bind_cpu_input(name, value)
        for name, value in zip(graph.io.past_names, past):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)  # the empty past of a first call
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(graph.io.output, "cpu")  # hidden state / logits go to the host sampler
        for name in graph.io.present_names:
            binding.bind_output(name, "cuda", self.DEVICE_ID)
        graph.session.run_with_iobinding(binding)
        out, *present = binding.get_outputs()
        return out.numpy(), present
