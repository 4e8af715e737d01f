"""Rows on the engine-ready plans (``export --layout engine`` -> ``build``) with TensorRT: one
enqueue per patch for every row, captured as a CUDA graph. numpy + TensorRT + cuda-python.

TensorRT does not let an output alias an input, so the row state (KV caches, positions, hidden
states) lives in two sets of device buffers: a call reads set ``cur`` and writes set ``1 - cur``,
then the sets swap (ping-pong, as in NVIDIA's TensorRT GPT-2 demo). Each set's call has fixed
shapes and addresses, so after one uncaptured enqueue per set its work is captured once and
replayed for every later patch (two CUDA graphs). A context load goes through the same swap; the
context loader does not write the pending hidden states, so they are copied across with it.

Not run on any machine of this project: the lent GPUs have no TensorRT that runs there (see the
README). It follows the documented API the step-graph backend (``trt_backend.py``) uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from notagen_trt.config import PATCH_SIZE
from notagen_trt.errors import NotaGenError

from .cuda import ok as _ok
from .executor import Executor
from .graph_executor import SETTINGS, fill_settings, output_of
from .piece import PatchRequest
from .trt_backend import DeviceBuffer, _EngineGraph, capture_graph

if TYPE_CHECKING:
    from .trt_backend import TrtBackend


class TrtGraphExecutor(Executor):
    """``rows`` rows of an engine directory built from engine-ready graphs (see the module doc)."""

    def __init__(self, backend: "TrtBackend", rows: int) -> None:
        self.config, self.rows, self.name = backend.config, rows, f"{backend.name}-engine-graph"
        self.cudart, self.cuda_graphs = backend.cudart, backend.cuda_graphs
        cudart = self.cudart
        self.stream = _ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.engine = _EngineGraph(backend.trt, backend.runtime, backend.engine_dir, backend.manifest, "patch_engine")
        self.loader = _EngineGraph(backend.trt, backend.runtime, backend.engine_dir, backend.manifest, "context_loader")
        self._contexts = {}
        for graph in (self.engine, self.loader):
            ctx = graph.engine.create_execution_context()
            if ctx is None:
                raise NotaGenError(f"{graph.path}: could not create an execution context (GPU memory?)")
            ctx.set_optimization_profile_async(0, self.stream)
            self._contexts[graph.io.name] = ctx
        io = self.engine.io
        self.shapes = {s.name: tuple(rows if d == "rows" else d for d in s.shape) for s in io.inputs}
        self._host = {name: np.zeros(self.shapes[name], self.engine.dtypes[name]) for name in SETTINGS}
        self._settings = {name: DeviceBuffer(cudart, self._host[name].nbytes) for name in SETTINGS}
        self.state_names = [s.name for s in io.inputs if s.name not in SETTINGS]
        self._state = [{name: self._zeros(name) for name in self.state_names} for _ in range(2)]
        self._tokens = DeviceBuffer(cudart, rows * PATCH_SIZE * 8)
        self._tokens_host = np.zeros((rows, PATCH_SIZE), np.int64)
        top = self.loader.io.max_positions
        self._patches = DeviceBuffer(cudart, top * PATCH_SIZE * 8)
        self._row = DeviceBuffer(cudart, 8)
        self._accepted = np.zeros(rows, dtype=bool)
        self.cur = 0
        self._graphs: dict[int, Any] = {}  # state set read -> instantiated CUDA graph
        self._seen: set[int] = set()

    def _zeros(self, name: str) -> DeviceBuffer:
        nbytes = int(np.prod(self.shapes[name])) * self.engine.dtypes[name].itemsize
        buf = DeviceBuffer(self.cudart, nbytes)
        _ok(self.cudart.cudaMemset(buf.ptr, 0, buf.nbytes))
        return buf

    # ---- the Executor interface --------------------------------------------------------------
    def load(self, row: int, patches: np.ndarray) -> None:
        self._accepted[row] = False
        ids = np.ascontiguousarray(np.asarray(patches, dtype=np.int64)[None])
        ctx, src, dst = self._contexts["context_loader"], self._state[self.cur], self._state[1 - self.cur]
        self._patches.upload(ids, self.stream)
        self._row.upload(np.array([row], np.int64), self.stream)
        ctx.set_input_shape("patches", ids.shape)
        ctx.set_tensor_address("patches", self._patches.ptr)
        ctx.set_input_shape("row", (1,))
        ctx.set_tensor_address("row", self._row.ptr)
        for name in self.loader.io.input_names[2:]:
            ctx.set_input_shape(name, self.shapes[name])
            ctx.set_tensor_address(name, src[name].ptr)
            ctx.set_tensor_address(output_of(name), dst[name].ptr)
        if not ctx.execute_async_v3(int(self.stream)):
            raise NotaGenError(f"{self.loader.path}: TensorRT failed to load a context of {len(ids[0])} patches")
        pending = src["hidden_next"]  # not an output of the loader: carried into the set it wrote
        _ok(self.cudart.cudaMemcpyAsync(dst["hidden_next"].ptr, pending.ptr, pending.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream))
        _ok(self.cudart.cudaStreamSynchronize(self.stream))
        self.cur = 1 - self.cur

    def sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        fill_settings(self._host, requests, self._accepted)
        for name in SETTINGS:
            self._settings[name].upload(self._host[name], self.stream)
        self._enqueue(self.cur)
        self._tokens.download(self._tokens_host, self.stream)
        _ok(self.cudart.cudaStreamSynchronize(self.stream))  # the one host sync per patch
        self.cur = 1 - self.cur
        return {row: self._tokens_host[row].copy() for row in requests}

    def accept(self, rows: Sequence[int]) -> None:
        self._accepted[list(rows)] = True  # applied in the plan at the start of the next patch

    def free(self, row: int) -> None:
        self._accepted[row] = False

    def close(self) -> None:
        for graph in self._graphs.values():
            self.cudart.cudaGraphExecDestroy(graph)
        self._graphs.clear()
        self.cudart.cudaStreamDestroy(self.stream)

    # ---- enqueue and capture -----------------------------------------------------------------
    def _enqueue(self, cur: int) -> None:
        if cur in self._graphs:
            _ok(self.cudart.cudaGraphLaunch(self._graphs[cur], self.stream))
            return
        ctx = self._bind(cur)
        if not ctx.execute_async_v3(int(self.stream)):
            raise NotaGenError(f"{self.engine.path}: TensorRT failed to run a patch")
        if self.cuda_graphs and cur in self._seen:  # second visit: capture this set's call
            self._graphs[cur] = capture_graph(self.cudart, self.stream, lambda: ctx.execute_async_v3(int(self.stream)),
                                              f"{self.engine.path}: TensorRT failed to enqueue a patch")
        self._seen.add(cur)

    def _bind(self, cur: int) -> Any:
        """The patch call reading state set ``cur`` and writing the other."""
        ctx, src, dst = self._contexts["patch_engine"], self._state[cur], self._state[1 - cur]
        for name in SETTINGS:
            ctx.set_input_shape(name, self.shapes[name])
            ctx.set_tensor_address(name, self._settings[name].ptr)
        for name in self.state_names:
            ctx.set_input_shape(name, self.shapes[name])
            ctx.set_tensor_address(name, src[name].ptr)
            ctx.set_tensor_address(output_of(name), dst[name].ptr)
        ctx.set_tensor_address("tokens", self._tokens.ptr)
        return ctx
