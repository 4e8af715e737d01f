"""Rows on the engine-ready graphs (``export --layout engine``) in ONNX Runtime: one call per
patch for every row, the KV caches and the rows' state never leaving their buffers.

Every call binds each state output (``present.*``, ``position_out``, ``hidden_out``,
``hidden_next_out``) to the buffer of the input it replaces, so the caches are written in place
(ScatterND skips its copy when input and output share a buffer) and nothing is allocated per
call. A graph's CPU form (ONNX Runtime's fused attention; int8-wo: MatMulNBits too) runs where
the directory has one: on the CPU, and on CUDA in fp16 variants, whose form has no shape computed
from data (GroupQueryAttention has fp16 CUDA kernels only; on an H200 it took a NotaGen-X patch
from 8.4 to 7.6 ms at one row). On the CPU the buffers are numpy arrays; with CUDA they are device
OrtValues, the per-patch settings are copied into fixed device inputs, and ONNX Runtime can
capture the call as a CUDA graph (``cuda_graph``: the graph has fixed shapes and addresses, and
every node on the GPU).

The published rules are not here: the engine applies them through ``piece.PieceState``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from notagen_trt.config import PATCH_SIZE, VOCAB_SIZE, ModelConfig
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import graph_io

from .executor import Executor
from .piece import PatchRequest

_NUMPY = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64, "bool": np.bool_}


class GraphExecutor(Executor):
    """``rows`` rows of an engine-ready model directory on ONNX Runtime (see the module doc)."""

    def __init__(self, model_dir: Path, manifest: dict[str, Any], config: ModelConfig, rows: int,
                 options: ort.SessionOptions, device: str = "cpu", cuda_graph: bool | None = None,
                 device_id: int = 0) -> None:
        self.config, self.rows, self.device = config, rows, device
        self.name = f"onnxruntime-{device}-engine-graph"
        cuda = device == "cuda"
        self.cuda_graph = cuda if cuda_graph is None else cuda_graph
        engine_io = graph_io(manifest, "patch_engine", model_dir)
        loader_io = graph_io(manifest, "context_loader", model_dir)
        # Each graph's CPU form where the directory has one, on a CPU and, in fp16, on CUDA (module doc).
        fused = not cuda or manifest.get("precision") == "fp16"
        self.files = tuple(io.cpu_path(model_dir) if fused else io.path(model_dir) for io in (engine_io, loader_io))
        try:
            self._engine = _session(self.files[0], options, device, device_id, self.cuda_graph)
        except NotaGenError:
            if not self.cuda_graph:
                raise
            # ONNX Runtime refuses a CUDA graph when a node runs on the CPU: run without, saying so.
            self._engine, self.cuda_graph = _session(self.files[0], options, device, device_id, False), False
        if cuda:
            self.name += "-cuda-graph" if self.cuda_graph else "-no-cuda-graph"
        self._loader = _session(self.files[1], options, device, device_id, False)
        shapes = {s.name: tuple(rows if d == "rows" else d for d in s.shape) for s in engine_io.inputs}
        dtypes = {s.name: _NUMPY[s.dtype] for s in engine_io.inputs}
        self._accepted = np.zeros(rows, dtype=bool)  # accepted since the last sample, applied by the next
        self._host = {name: np.zeros(shapes[name], dtypes[name]) for name in shapes}
        fill_settings(self._host, {}, self._accepted)  # every row not asked yet
        # What a call changes: the state (in place) and the tokens it samples.
        self._state = [s.name for s in engine_io.inputs if s.name not in SETTINGS]
        self._tokens = np.zeros((rows, PATCH_SIZE), np.int64)
        if cuda:
            where = ("cuda", device_id)
            self._values = {name: ort.OrtValue.ortvalue_from_numpy(array, *where) for name, array in self._host.items()}
            self._tokens_value = ort.OrtValue.ortvalue_from_numpy(self._tokens, *where)
        else:
            self._values, self._tokens_value = None, None
        self._binding = self._bind_engine()
        self._row_bindings: dict[int, ort.IOBinding] = {}  # a lone row's call, by row (CPU)

    # ---- the Executor interface --------------------------------------------------------------
    def load(self, row: int, patches: np.ndarray) -> None:
        self._accepted[row] = False  # the row's state is the loaded context's
        patches = np.ascontiguousarray(np.asarray(patches, dtype=np.int64)[None])
        binding = self._loader.io_binding()
        binding.bind_cpu_input("patches", patches)
        binding.bind_cpu_input("row", np.array([row], dtype=np.int64))
        for name in self._loader_state:
            self._bind(binding, name, name)
            self._bind(binding, output_of(name), name, output=True)
        self._loader.run_with_iobinding(binding)

    def sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        if len(requests) == 1 and self.rows > 1 and self._values is None:
            # A lone row on the CPU: a call of one row over that row's buffers (a lone demo piece
            # on a 4-row engine took 1.32x the one-row engine's time as a 2-row call on a 2-core
            # Xeon, and in int8-wo another piece). Other rows' accepts stay pending.
            (row, request), = requests.items()
            one = slice(row, row + 1)
            fill_settings({name: self._host[name][one] for name in SETTINGS}, {0: request}, self._accepted[one])
            if row not in self._row_bindings:
                self._row_bindings[row] = self._bind_engine(one)
            self._engine.run_with_iobinding(self._row_bindings[row])
            return {row: self._tokens[row].copy()}
        host = self._host
        fill_settings(host, requests, self._accepted)
        if self._values is not None:
            for name in SETTINGS:
                self._values[name].update_inplace(host[name])
        self._engine.run_with_iobinding(self._binding)
        tokens = self._tokens_value.numpy() if self._tokens_value is not None else self._tokens
        return {row: tokens[row].copy() for row in requests}

    def accept(self, rows: Sequence[int]) -> None:
        self._accepted[list(rows)] = True  # applied in the graph at the start of the next patch

    def free(self, row: int) -> None:
        self._accepted[row] = False

    def close(self) -> None:
        self._binding = None
        self._row_bindings.clear()
        self._values = None

    # ---- binding -----------------------------------------------------------------------------
    @property
    def _loader_state(self) -> list[str]:
        return [n for n in self._state if n != "hidden_next"]

    def _bind(self, binding: ort.IOBinding, name: str, buffer: str, output: bool = False,
              rows: slice = slice(None)) -> None:
        """Bind graph input or output ``name`` to the buffer of state input ``buffer`` (on the
        CPU, its ``rows`` only: a row's slice of a [rows, ...] array is contiguous)."""
        if self._values is not None:
            value = self._values[buffer]
            (binding.bind_ortvalue_output if output else binding.bind_ortvalue_input)(name, value)
            return
        array = self._host[buffer][rows]
        bind = binding.bind_output if output else binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def _bind_engine(self, rows: slice = slice(None)) -> ort.IOBinding:
        """The patch call's binding, made once: its buffers never move (a CUDA graph needs that)."""
        binding = self._engine.io_binding()
        for name in SETTINGS:
            self._bind(binding, name, name, rows=rows)
        for name in self._state:
            self._bind(binding, name, name, rows=rows)
            self._bind(binding, output_of(name), name, output=True, rows=rows)
        if self._tokens_value is not None:
            binding.bind_ortvalue_output("tokens", self._tokens_value)
        else:
            tokens = self._tokens[rows]
            binding.bind_output("tokens", "cpu", 0, np.int64, list(tokens.shape), tokens.ctypes.data)
        return binding


SETTINGS = ("uniforms", "forced", "forced_mask", "top_k", "top_p", "inv_temperature", "accept")


def fill_settings(host: dict[str, np.ndarray], requests: Mapping[int, PatchRequest], accepted: np.ndarray) -> None:
    """Write a patch call's per-row settings into ``host`` (arrays named as the graph's
    inputs): each asked row's forced prefix, uniforms and sampling settings, and the accepts
    since the last call (``accepted`` is then cleared). Rows not asked sample unforced, unused,
    with top-k 1: the CPU form sorts as many ranks as the call's largest top-k."""
    for name in SETTINGS:
        host[name][:] = 0
    host["top_k"][:], host["top_p"][:], host["inv_temperature"][:] = 1, 1.0, 1.0
    for row, r in requests.items():
        k = len(r.prefix)
        host["forced"][row, :k], host["forced_mask"][row, :k] = r.prefix, True
        host["uniforms"][row] = r.uniforms
        host["top_k"][row] = r.params.top_k or VOCAB_SIZE
        host["top_p"][row], host["inv_temperature"][row] = r.params.top_p, 1.0 / r.params.temperature
    host["accept"][:] = accepted
    accepted[:] = False


def output_of(name: str) -> str:
    """The output that replaces state input ``name``."""
    return name.replace("past_key_values.", "present.") if name.startswith("past_key_values.") else f"{name}_out"


def _session(path: Path, options: ort.SessionOptions, device: str, device_id: int, cuda_graph: bool) -> ort.InferenceSession:
    if device == "cuda":
        # The arena grows by what is asked, not by powers of two: a model's weights and caches
        # are allocated once, and doubling would leave up to half of the last block unused.
        provider = {"device_id": str(device_id), "enable_cuda_graph": "1" if cuda_graph else "0",
                    "arena_extend_strategy": "kSameAsRequested"}
        providers: list = [("CUDAExecutionProvider", provider), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise NotaGenError(f"{path}: ONNX Runtime could not load the engine-ready graph ({exc}); re-export the "
                           "model with `notagen-trt export --layout engine`") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise NotaGenError(f"{path}: ONNX Runtime fell back to the CPU (CUDA libraries missing?); install "
                           "onnxruntime-gpu matching your CUDA version, or use --backend ort-cpu")
    return session

