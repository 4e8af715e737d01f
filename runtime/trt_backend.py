"""TensorRT backend (full TensorRT or TensorRT-RTX) over an engine directory: numpy + the
flavour's module + cuda-python, never torch. TensorRT and cuda-python are imported when a
backend is created, so this module imports fine on a machine without them.

Per graph the backend holds one deserialized engine; each session gets, per graph, two execution
contexts (context 0 on the ``prefill`` profile, context 1 on ``decode``: no profile switch on the
hot path) and its own device buffers:

- fixed-capacity KV buffers, two sets (ping-pong) of one buffer per past tensor, each sized for
  the decode profile's largest ``present`` ([batch, heads, max_positions, 64]). A step reads its
  past, bound with ``set_input_shape`` at the current length, from one set and writes the grown
  ``present`` into the other; the growing layout keeps each tensor contiguous at its own length,
  so no copy is needed between steps. The set holding a past of length p is ``p % 2``: a given
  char position always reads and writes the same addresses.
- input / output buffers sized for the prefill profile's maximum.

CUDA graphs: a captured graph fixes shapes and addresses. The char decoder's decode step at past
length p (1..16) has both fixed, so its enqueue is captured once per position, after one
uncaptured run at that position, and replayed after that (at most 16 graphs per session). The
patch decoder's step grows its shapes every patch (up to PATCH_LENGTH different shapes), so it
runs uncaptured. Engines built from the engine-ready graphs (fixed-capacity caches, a whole patch
per call) run on ``trt_graph_executor.py`` instead: one captured enqueue per patch for every row.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from notagen_trt.config import HEAD_DIM
from notagen_trt.engines.engine_manifest import RuntimeInfo, check_engine, engine_io_mismatch
from notagen_trt.engines.flavors import get_flavor
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import graph_io, model_config

from . import cuda
from .cuda import ok as _ok
from .executor import Executor, StepExecutor, StepSession

PREFILL, DECODE = 0, 1


class DeviceBuffer:
    """``nbytes`` of device memory (cudaMalloc), freed with the buffer."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        self.cudart = cudart
        self.nbytes = max(int(nbytes), 256)  # zero-size tensors still get a valid address
        self.ptr = int(_ok(cudart.cudaMalloc(self.nbytes)))

    def upload(self, array: np.ndarray, stream: Any) -> None:
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise NotaGenError(f"input of {array.nbytes} bytes exceeds the {self.nbytes}-byte buffer (profile maximum)")
        _ok(self.cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def download(self, out: np.ndarray, stream: Any, offset: int = 0) -> np.ndarray:
        _ok(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.ptr + offset, out.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        return out

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # interpreter shutdown: the driver may already be gone
            pass


class _EngineGraph:
    """One plan: its ICudaEngine and the IO (``io``, from the manifest) it was checked against."""

    def __init__(self, trt: Any, runtime: Any, engine_dir: Path, manifest: dict[str, Any], name: str) -> None:
        io = graph_io(manifest, name, engine_dir)
        path = io.path(engine_dir)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise NotaGenError(f"{path}: TensorRT could not deserialize the plan (see the message above); rebuild it "
                               f"here with `notagen-trt build`")
        problem = engine_io_mismatch(engine, io)
        if problem:
            raise NotaGenError(f"{path}: {problem}; rebuild it with `notagen-trt build`")
        self.trt, self.engine, self.io, self.path = trt, engine, io, path
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in io.input_names + io.output_names}

    def max_shape(self, name: str, profile: int) -> tuple[int, ...]:
        return tuple(self.engine.get_tensor_profile_shape(name, profile)[2])


class _GraphState:
    """One session's contexts and buffers for one graph (see the module doc)."""

    def __init__(self, graph: _EngineGraph, cudart: Any, stream: Any, heads: int, capture: bool) -> None:
        self.g, self.cudart, self.stream, self.capture = graph, cudart, stream, capture
        self.contexts = []
        for profile in (PREFILL, DECODE):
            ctx = graph.engine.create_execution_context()
            if ctx is None:
                raise NotaGenError(f"{graph.path}: could not create an execution context (GPU memory?)")
            ctx.set_optimization_profile_async(profile, stream)
            self.contexts.append(ctx)
        io = graph.io
        kv_item = graph.dtypes[io.past_names[0]].itemsize
        kv_bytes = heads * io.max_positions * HEAD_DIM * kv_item  # batch 1 per session
        self.kv = [[DeviceBuffer(cudart, kv_bytes) for _ in io.past_names] for _ in range(2)]
        self.empty = DeviceBuffer(cudart, 0)
        self.bufs: dict[str, DeviceBuffer] = {}
        for name in io.head_names:
            self.bufs[name] = DeviceBuffer(cudart, _volume(graph.max_shape(name, PREFILL)) * graph.dtypes[name].itemsize)
        width = io.outputs[0].shape[-1]
        self.bufs[io.output] = DeviceBuffer(cudart, io.max_positions * width * graph.dtypes[io.output].itemsize)
        self.width, self.heads = int(width), heads
        self.past = 0
        self.graphs: dict[int, Any] = {}  # past length -> instantiated CUDA graph (decode steps)
        self.seen: set[int] = set()  # past lengths run once uncaptured

    def run(self, feeds: dict[str, np.ndarray], new: int) -> np.ndarray:
        """Run one step of ``new`` positions after the current past; return the last position's
        output row (hidden state or logits) on the host."""
        g, past = self.g, self.past
        total = past + new
        if total > g.io.max_positions:
            raise NotaGenError(f"{g.path}: {total} positions exceed the engine's {g.io.max_positions}")
        profile = DECODE if (new == 1 and past > 0) else PREFILL
        ctx = self.contexts[profile]
        for name, value in feeds.items():
            self.bufs[name].upload(value.astype(g.dtypes[name], copy=False), self.stream)
        if profile == DECODE and past in self.graphs:
            _ok(self.cudart.cudaGraphLaunch(self.graphs[past], self.stream))
        else:
            self._bind(ctx, feeds, past, total)
            if not ctx.execute_async_v3(int(self.stream)):
                raise NotaGenError(f"{g.path}: TensorRT failed to run the step (past {past}, new {new})")
            if profile == DECODE and self.capture and past in self.seen:
                # The second visit of this position: shapes and addresses were just used by an
                # uncaptured enqueue, so the capture records the same work for later replays.
                self._capture(ctx, past)
            self.seen.add(past)
        self.past = total
        out = np.empty(self.width, dtype=g.dtypes[g.io.output])
        self.bufs[g.io.output].download(out, self.stream, offset=(new - 1) * self.width * out.itemsize)
        _ok(self.cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32)

    def _bind(self, ctx: Any, feeds: dict[str, np.ndarray], past: int, total: int) -> None:
        g = self.g
        for name, value in feeds.items():
            ctx.set_input_shape(name, value.shape)
            ctx.set_tensor_address(name, self.bufs[name].ptr)
        src = self.kv[past % 2] if past else [self.empty] * len(g.io.past_names)
        dst = self.kv[total % 2]
        for name, buf in zip(g.io.past_names, src):
            ctx.set_input_shape(name, (1, self.heads, past, HEAD_DIM))
            ctx.set_tensor_address(name, buf.ptr)
        for name, buf in zip(g.io.present_names, dst):
            ctx.set_tensor_address(name, buf.ptr)
        ctx.set_tensor_address(g.io.output, self.bufs[g.io.output].ptr)

    def _capture(self, ctx: Any, past: int) -> None:
        """Capture the decode enqueue at this past length into a CUDA graph (not launched now)."""
        self.graphs[past] = capture_graph(self.cudart, self.stream, lambda: ctx.execute_async_v3(int(self.stream)),
                                          f"{self.g.path}: TensorRT failed to enqueue the step")

    def reset(self) -> None:
        self.past = 0

    def close(self) -> None:
        for exec_graph in self.graphs.values():
            self.cudart.cudaGraphExecDestroy(exec_graph)
        self.graphs.clear()


def capture_graph(cudart: Any, stream: Any, enqueue: Callable[[], bool], failed: str) -> Any:
    """Capture what ``enqueue`` puts on ``stream`` into an instantiated CUDA graph (nothing runs
    now); ``failed`` starts the error when the enqueue reports failure."""
    _ok(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
    ok = enqueue()
    graph = _ok(cudart.cudaStreamEndCapture(stream))
    if not ok:
        raise NotaGenError(f"{failed} while capturing a CUDA graph; retry with cuda_graphs=False")
    instance = _ok(cudart.cudaGraphInstantiate(graph, 0))
    _ok(cudart.cudaGraphDestroy(graph))
    return instance


def _volume(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def runtime_info(flavor: str) -> RuntimeInfo:
    """This machine's flavour version and GPU (GPU fields None where there is none)."""
    fl = get_flavor(flavor)
    trt = fl.load()
    gpu = cuda.local_gpu()
    return RuntimeInfo(fl.name, fl.version(trt), gpu and gpu["name"], gpu and gpu["compute_capability"])


class TrtBackend:
    """A backend (see executor.py) running TensorRT plans from ``notagen-trt build``: the step
    graphs' plans one row per session, or, where the engine was built from engine-ready graphs,
    every row in one enqueue per patch (``trt_graph_executor.py``)."""

    def __init__(self, engine_dir: str | Path, onnx_dir: str | Path | None = None, cuda_graphs: bool = True) -> None:
        engine_dir = Path(engine_dir)
        # Intact plans first (no TensorRT call on a damaged file), then this runtime and GPU.
        manifest = check_engine(engine_dir, here=runtime_info, onnx_dir=onnx_dir)
        flavor = manifest["engine"]["flavor"]
        fl = get_flavor(flavor)
        self.trt = fl.load()
        self.cudart = cuda.cudart()
        _ok(self.cudart.cudaSetDevice(0))
        self.logger = fl.logger(self.trt)  # stderr: `generate --json` owns stdout
        self.runtime = self.trt.Runtime(self.logger)
        self.manifest = manifest
        self.config = model_config(manifest)
        self.cuda_graphs = cuda_graphs
        self.name = f"tensorrt-{flavor}"
        self.engine_dir = engine_dir
        self.engine_ready = manifest.get("layout") == "engine"

    @cached_property
    def patch(self) -> _EngineGraph:
        """The patch decoder's step plan, deserialized on first use (the engine-ready executor
        never uses it, and every deserialized plan holds its weights on the GPU)."""
        return _EngineGraph(self.trt, self.runtime, self.engine_dir, self.manifest, "patch_decoder")

    @cached_property
    def char(self) -> _EngineGraph:
        return _EngineGraph(self.trt, self.runtime, self.engine_dir, self.manifest, "char_decoder")

    @property
    def default_rows(self) -> int:
        return 16 if self.engine_ready else 1

    def new_session(self) -> "TrtSession":
        return TrtSession(self)

    def executor(self, rows: int = 1) -> Executor:
        if self.engine_ready:
            from .trt_graph_executor import TrtGraphExecutor

            return TrtGraphExecutor(self, rows)
        return StepExecutor(self.name, self.config, [TrtSession(self) for _ in range(rows)])

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One uncaptured call of a graph on host arrays (batch 1 or more), every output returned:
        the graph-level entry point ``notagen-trt verify`` compares with other backends."""
        g = self.patch if graph == "patch_decoder" else self.char
        cudart = self.cudart
        stream = _ok(cudart.cudaStreamCreate())
        try:
            past = int(feeds[g.io.past_names[0]].shape[2])
            new = int(feeds[g.io.head_names[0]].shape[1])
            ctx = g.engine.create_execution_context()
            ctx.set_optimization_profile_async(DECODE if (new == 1 and past > 0) else PREFILL, stream)
            buffers = []
            for name in g.io.input_names:
                value = np.ascontiguousarray(feeds[name].astype(g.dtypes[name], copy=False))
                buf = DeviceBuffer(cudart, value.nbytes)
                buf.upload(value, stream)
                ctx.set_input_shape(name, value.shape)
                ctx.set_tensor_address(name, buf.ptr)
                buffers.append(buf)
            outs = {}
            for name in g.io.output_names:
                shape = tuple(ctx.get_tensor_shape(name))
                outs[name] = np.empty(shape, dtype=g.dtypes[name])
                buf = DeviceBuffer(cudart, outs[name].nbytes)
                ctx.set_tensor_address(name, buf.ptr)
                buffers.append((name, buf))
            if not ctx.execute_async_v3(int(stream)):
                raise NotaGenError(f"{g.path}: TensorRT failed to run (inputs {[v.shape for v in feeds.values()]})")
            for item in buffers:
                if isinstance(item, tuple):
                    item[1].download(outs[item[0]], stream)
            _ok(cudart.cudaStreamSynchronize(stream))
            return outs
        finally:
            cudart.cudaStreamDestroy(stream)


class TrtSession(StepSession):
    """One piece's decoding state: its stream, contexts and fixed-capacity buffers."""

    def __init__(self, backend: TrtBackend) -> None:
        self.backend = backend
        config = backend.config
        self.stream = _ok(backend.cudart.cudaStreamCreateWithFlags(backend.cudart.cudaStreamNonBlocking))
        self.patch = _GraphState(backend.patch, backend.cudart, self.stream, config.num_heads, capture=False)
        self.char = _GraphState(backend.char, backend.cudart, self.stream, config.num_heads,
                                capture=backend.cuda_graphs)
        self._zero_hidden = np.zeros((1, config.hidden_size), dtype=np.float32)

    def reset(self) -> None:
        self.patch.reset()

    def extend(self, patches: np.ndarray) -> np.ndarray:
        ids = np.asarray(patches, dtype=np.int64)[None]
        return self.patch.run({self.backend.patch.io.head_names[0]: ids}, ids.shape[1])

    def char_start(self, hidden: np.ndarray, tokens: list[int]) -> np.ndarray:
        ids_name, hidden_name = self.backend.char.io.head_names
        self.char.reset()
        ids = np.asarray([tokens], dtype=np.int64)
        return self.char.run({ids_name: ids, hidden_name: np.asarray(hidden, dtype=np.float32)[None]}, len(tokens))

    def char_step(self, token: int) -> np.ndarray:
        ids_name, hidden_name = self.backend.char.io.head_names
        return self.char.run({ids_name: np.asarray([[token]], dtype=np.int64), hidden_name: self._zero_hidden}, 1)

    def close(self) -> None:
        self.char.close()
        self.backend.cudart.cudaStreamDestroy(self.stream)
