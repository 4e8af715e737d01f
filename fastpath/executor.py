"""The fast CUDA path as an executor: fixed-capacity KV caches, in-graph sampling, two CUDA graphs
per patch for every row.

A patch for every row is two captured graphs replayed back to back: the 16 char-level steps,
each drawing its character on the device from a host-drawn uniform with the row's own sampling
settings (the numpy sampler's rule, in float64), then the patch-level step that writes the
patch's keys and values in place at each row's own position. The host waits once per patch, for
the first graph only: it reads the 16 characters per row and applies the published rules while
the GPU still runs the patch step, whose result no rule needs before the next patch. ``accept``
marks the rows whose patch joins their context, and the next replay advances them before it
samples. Context loads replay a graph per padded length.

On CUDA with Triton, fp16 and int8 weight-only steps run on the fused kernels of
``decode_kernels`` (five a layer, float32 residual stream); fp32 and the CPU run PyTorch ops,
which reproduce the reference exactly. The published rules are not here: the engine
(``runtime.engine``) applies them through ``runtime.piece.PieceState``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from notagen_trt.config import EOS_ID, PATCH_SIZE, VOCAB_SIZE
from notagen_trt.errors import NotaGenError
from notagen_trt.export.model import Block, Conv1D, NotaGenModel
from notagen_trt.runtime.executor import Executor
from notagen_trt.runtime.piece import PatchRequest


def sample_torch(logits: torch.Tensor, u: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 inv_temperature: torch.Tensor) -> torch.Tensor:
    """runtime.sampling.sample on the device, float64, one row's settings per row ([B] each;
    top_k 0 = off): the same weights, truncation, ties and inverse CDF (on CUDA the running sums
    are scans, which may round otherwise)."""
    z = logits.double()
    ranked, order = torch.sort(z, dim=-1, descending=True, stable=True)
    rank = torch.arange(z.shape[-1], device=z.device)
    keep = (rank[None] < top_k[:, None]) | (top_k[:, None] == 0)
    ranked = torch.where(keep, torch.exp(ranked - ranked[..., :1]), 0.0)
    mass = torch.cumsum(ranked, -1)
    before = torch.cat([torch.zeros_like(mass[..., :1]), mass[..., :-1]], -1)
    ranked = torch.where(before <= top_p[:, None] * mass[..., -1:], ranked, 0.0) ** inv_temperature[:, None]
    probs = torch.zeros_like(z).scatter_(-1, order, ranked)
    cdf = torch.cumsum(probs, -1)
    return torch.clamp((cdf <= (u * cdf[..., -1])[..., None]).sum(-1), max=z.shape[-1] - 1)


Linear = Callable[[Conv1D, torch.Tensor, bool], torch.Tensor]


def dense(layer: Conv1D, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """x [..., in] @ weight + bias, then GPT-2's tanh GELU where asked: the reference's own ops
    (``_addmm_activation``'s fused GELU is the erf form on the CPU, which changes pieces)."""
    y = torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight).view(*x.shape[:-1], -1)
    return F.gelu(y, approximate="tanh") if gelu else y


def _attention_inputs(block: Block, x: torch.Tensor, linear: Linear = dense) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, t, H] -> q [B, heads, t, 64] and the new keys and values together, [B, 2, heads, t, 64]
    (one cache write per layer instead of two)."""
    b, t, h = x.shape
    heads = block.attn.heads
    qkv = linear(block.attn.c_attn, block.ln_1(x), False).view(b, t, 3, heads, h // heads).permute(0, 2, 3, 1, 4)
    return qkv[:, 0], qkv[:, 1:]


def _finish(block: Block, x: torch.Tensor, y: torch.Tensor, linear: Linear = dense) -> torch.Tensor:
    """Attention output projection, residual, MLP, residual."""
    b, _, t, _ = y.shape
    x = x + linear(block.attn.c_proj, y.transpose(1, 2).reshape(b, t, -1), False)
    mlp = block.mlp
    return x + linear(mlp.c_proj, linear(mlp.c_fc, block.ln_2(x), True), False)


def _triton_kernels():
    """(decode_kernels, sampler_kernel) where Triton is installed, else None."""
    try:
        from . import decode_kernels, sampler_kernel
    except ImportError:  # no triton (CPU-only installs)
        return None
    return decode_kernels, sampler_kernel




Precision = str  # fp32 | fp16 | int8-wo
PRECISIONS = ("fp32", "fp16", "int8-wo")


class FastBackend:
    """A NotaGen model ready for the fast path on one device: on CUDA with Triton, fp16 and
    int8-wo weights repacked [out, in] for the fused kernels (the GPU never holds two copies);
    otherwise the PyTorch modules in fp32 / fp16. Executors of any row count share it."""

    MAX_DEFAULT_ROWS = 16  # a patch for 16 rows costs about 1.4x a patch for one on an H200
    # GPU memory a default row count leaves free beside the rows' caches: the graphs' pools, context
    # loads, the workspace, and whatever else the GPU runs (the caches are NotaGen-X's bulk: 105 MB a
    # row in fp16 against 50 MB of everything else at 16 rows).
    HEADROOM = 1 << 30

    def __init__(self, model: NotaGenModel, device: str | torch.device = "cuda", precision: Precision = "fp16") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device, self.precision = torch.device(device), precision
        triton_kernels = _triton_kernels() if self.device.type == "cuda" else None
        self.kernels = triton_kernels[0] if triton_kernels else None
        self.sample_into = triton_kernels[1].sample_into if triton_kernels else None
        self.fused = self.kernels is not None and precision != "fp32"
        if precision == "int8-wo" and not self.fused:
            raise ValueError("int8-wo on the fast path needs a CUDA GPU and Triton (the fused decode kernels)")
        self.dtype = torch.float32 if precision == "fp32" else torch.float16
        self.packed: dict[nn.Module, object] = {}
        if self.fused:
            model = model.eval().float()
            int8 = precision == "int8-wo"
            for module in model.modules():
                if isinstance(module, Conv1D):
                    self.packed[module] = self.kernels.PackedLinear(module.weight.data, module.bias.data,
                                                                    int8=int8).to(self.device)
                    module.weight = nn.Parameter(torch.empty(0))  # the [in, out] copy is not needed
            lm_head = model.char_level_decoder.base.lm_head  # tied to wte, which stays for embedding
            self.packed[lm_head] = self.kernels.PackedLinear(lm_head.weight.data.t(), None, int8=int8).to(self.device)
            workspace = self.kernels.RowsWorkspace(list(self.packed.values()), self.device)  # layers run in turn
            for packed in self.packed.values():
                packed.workspace = workspace
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self.config = model.config
        self.name = f"fast-{self.device.type}-{precision}" + ("-triton" if self.fused else "")

    def row_bytes(self) -> int:
        """GPU memory of one row's caches, patch and char level (its other buffers are KBs)."""
        cfg = self.config
        per_position = 2 * cfg.num_heads * 64 * (torch.finfo(self.dtype).bits // 8)  # keys and values
        return per_position * (cfg.patch_num_layers * cfg.patch_length + cfg.char_num_layers * PATCH_SIZE)

    def free_bytes(self, collect: bool = False) -> int:
        """The GPU's free memory, once PyTorch's allocator has handed back what it holds unused (the
        packing's temporaries; the pools of graphs no longer alive, which no other allocation can
        use). ``collect``: first collect engines dropped but not yet collected (their views form
        cycles, and they hold their graphs), which takes ~0.2 s with torch loaded."""
        if collect:
            gc.collect()
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(self.device)[0]

    @property
    def default_rows(self) -> int:
        """16, or as many rows as the GPU's free memory holds beside HEADROOM (a smaller GPU, or one
        other work shares); the CPU's eager mode: 16."""
        if self.device.type != "cuda":
            return self.MAX_DEFAULT_ROWS
        rows = rows_that_fit(self.free_bytes(), self.row_bytes(), self.HEADROOM, self.MAX_DEFAULT_ROWS)
        if rows < self.MAX_DEFAULT_ROWS:  # short of memory: count what dropped engines still hold as free
            rows = rows_that_fit(self.free_bytes(collect=True), self.row_bytes(), self.HEADROOM, self.MAX_DEFAULT_ROWS)
        return rows

    def executor(self, rows: int = 1, graph: bool | None = None) -> "FastExecutor":
        try:
            return FastExecutor(self, rows, graph)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not out_of_memory(exc):
                raise
        # Cleaned up here (free_bytes), once the exception, whose frames hold the half-made executor, is gone.
        free, need = self.free_bytes(collect=True), rows * self.row_bytes()
        smaller = "--precision fp16 (caches of half the size), " if self.precision == "fp32" else ""
        if rows == 1:
            raise NotaGenError(f"not even one row fits on {self.device} ({free / 2**30:.2f} GiB free beside the "
                               f"model); try {smaller}another GPU, or stop other work on that one")
        # What the default would take: the graphs' pools and context loads need more than the caches
        # (21 rows of NotaGen-X whose caches fit in the 2.11 GiB free with 50 MiB to spare did not).
        fit = rows_that_fit(free, self.row_bytes(), self.HEADROOM, rows - 1)
        raise NotaGenError(
            f"{rows} rows do not fit on {self.device}: their caches need {need / 2**30:.2f} GiB in {self.precision} "
            f"and {free / 2**30:.2f} GiB is free beside the model; ask for fewer rows (--rows {fit}, or no --rows: "
            f"the default takes what fits), {smaller}or stop other work on that GPU")

    def linear(self, layer: Conv1D, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        packed = self.packed.get(layer)
        return packed(x, gelu=gelu) if packed is not None else dense(layer, x, gelu)


def out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocation failure: PyTorch's own error, or the RuntimeError a CUDA call (a graph
    capture's end, a module load) raises when the GPU has no memory left."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def rows_that_fit(free: int, row_bytes: int, headroom: int, most: int) -> int:
    """Rows whose caches fit in ``free`` bytes beside ``headroom``: 1 to ``most``."""
    return max(1, min(most, (free - headroom) // row_bytes))


class FastExecutor(Executor):
    """``rows`` rows of a FastBackend; ``graph=True`` (CUDA only, the default there) captures one
    patch for every row per replay."""

    def __init__(self, fast: FastBackend, rows: int = 1, graph: bool | None = None) -> None:
        self.fast, self.rows, self.config, self.name = fast, rows, fast.config, fast.name
        self.model, self.device = fast.model, fast.device
        self.graph_enabled = self.device.type == "cuda" if graph is None else graph
        cfg, heads, dtype = self.config, self.config.num_heads, fast.dtype
        zeros = lambda *shape, dt=dtype: torch.zeros(*shape, dtype=dt, device=self.device)  # noqa: E731
        # Per layer, keys and values side by side: [rows, 2, heads, positions, 64].
        self.patch_kv = [zeros(rows, 2, heads, cfg.patch_length, 64) for _ in range(cfg.patch_num_layers)]
        self.char_kv = [zeros(rows, 2, heads, PATCH_SIZE, 64) for _ in range(cfg.char_num_layers)]
        self.position = zeros(rows, dt=torch.long)  # next patch position per row
        self.hidden = zeros(rows, cfg.hidden_size)  # hidden state of each row's last accepted patch
        self.hidden_next = zeros(rows, cfg.hidden_size)
        # A patch's host inputs travel in one copy from one pinned buffer, [rows, 3 * 16 + 4] int64:
        # uniforms (float64 bits), forced ids, forced mask, top_k, top_p and 1 / temperature (float64
        # bits), and whether the row's last patch was accepted. The graph unpacks them (``_unpack``)
        # into the buffers the kernels read and applies the accepts first: ``accept`` costs no GPU
        # call (a service's engines share the GIL, and every host call holds it).
        n = PATCH_SIZE
        self._inputs = zeros(rows, 3 * n + 4, dt=torch.long)
        self.uniforms = self._inputs[:, :n].view(torch.float64)  # strided rows: the samplers take strides
        self.forced = zeros(rows, n, dt=torch.long)
        self.forced_mask = zeros(rows, n, dt=torch.bool)
        self.top_k = zeros(rows, dt=torch.long)
        self.top_p = torch.ones(rows, dtype=torch.float64, device=self.device)
        self.inv_temperature = torch.ones(rows, dtype=torch.float64, device=self.device)
        self.tokens = zeros(rows, n, dt=torch.long)
        pinned = self.device.type == "cuda"
        self._staging = torch.zeros(rows, 3 * n + 4, dtype=torch.long, pin_memory=pinned)
        self._tokens_host = torch.zeros(rows, n, dtype=torch.long, pin_memory=pinned)
        self._accepted = np.zeros(rows, dtype=bool)  # accepted since the last sample, applied by the next
        self._keep = zeros(rows, dt=torch.bool)
        self._graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None  # (chars, patch step)
        # Marks the characters on their way to the host: the patch step runs on past it.
        self._tokens_ready = torch.cuda.Event() if pinned else None
        self._prefill_graphs: dict[int, torch.cuda.CUDAGraph] = {}  # context loads, by padded length
        self._prefill_staging: dict[int, torch.Tensor] = {}
        # The last copy out of each staging buffer: the host waits for it before writing the buffer
        # again (two rows can load contexts of one padded length in one step, with no sync between).
        self._prefill_copied: dict[int, torch.cuda.Event] = {}
        self._prefill_inputs: dict[int, torch.Tensor] = {}  # [length + 1, 16]: the patches, then row and last
        if fast.fused:  # the fused steps' activations: a float32 residual stream, fp16 between kernels
            h = cfg.hidden_size
            self.x = zeros(rows, h, dt=torch.float32)
            self.qkv, self.attn, self.mlp = zeros(rows, 3 * h), zeros(rows, h), zeros(rows, 4 * h)
            self.logits = zeros(rows, VOCAB_SIZE, dt=torch.float32)
            ln_f = self.model.patch_level_decoder.base.ln_f
            self._patch_ln_f = (ln_f.weight.float(), ln_f.bias.float(), ln_f.eps)
        # The engine's row -> the buffers' row. A lone active row runs on row 0 of the buffers
        # through one-row graphs (the batch-1 kernels): on an H200 a patch for 16 rows costs ~1.4x
        # a patch for one, and a service with one piece in flight, or the last piece of a batch,
        # should not pay for the 15 idle rows. ``_to_row0`` moves a lone row to buffer row 0.
        self._slot = list(range(rows))
        self._lone = self._row0_view() if rows > 1 else None
        if self.graph_enabled:
            # Every graph is captured now, before an engine thread runs: a capture while another
            # thread works on the same GPU can fail both (a service runs one engine per thread).
            with self._on_device():
                self._capture()
                if self._lone is not None:
                    self._lone._capture(pool=self._graphs[0].pool())
                length = 1
                while True:
                    self._capture_prefill(min(length, cfg.patch_length))
                    if length >= cfg.patch_length:
                        break
                    length *= 2

    # ---- the Executor interface --------------------------------------------------------------
    # Each call makes this executor's GPU the current one: Triton launches, the capture's side
    # stream and the graph pool follow the current device, and a service runs one engine per GPU.
    def _on_device(self) -> contextlib.AbstractContextManager:
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def load(self, row: int, patches: np.ndarray) -> None:
        slot = self._slot[row]
        self._accepted[slot] = False  # the row's state is the loaded context's
        with self._on_device():
            self._prefill(slot, np.asarray(patches, dtype=np.int64))

    def sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        with self._on_device():
            if len(requests) == 1 and self._lone is not None:
                (row, request), = requests.items()
                self._to_row0(self._slot[row])
                return {row: self._lone._sample({0: request})[0]}
            tokens = self._sample({self._slot[row]: r for row, r in requests.items()})
            return {row: tokens[self._slot[row]] for row in requests}

    def _sample(self, requests: Mapping[int, PatchRequest]) -> dict[int, np.ndarray]:
        n = PATCH_SIZE
        host = self._staging.numpy()
        host[:] = 0
        floats = host.view(np.float64)
        for row, r in requests.items():
            k = len(r.prefix)
            host[row, n : n + k], host[row, 2 * n : 2 * n + k] = r.prefix, 1
            floats[row, :n] = r.uniforms
            host[row, 3 * n] = r.params.top_k
            floats[row, 3 * n + 1 : 3 * n + 3] = r.params.top_p, 1.0 / r.params.temperature
        host[:, 3 * n + 3] = self._accepted
        self._accepted[:] = False
        self._inputs.copy_(self._staging, non_blocking=True)
        if not self.graph_enabled:
            self._attempt()
            self._tokens_host.copy_(self.tokens)
        else:
            if self._graphs is None:
                self._capture()
            chars, patch_step = self._graphs
            chars.replay()
            self._tokens_host.copy_(self.tokens, non_blocking=True)
            self._tokens_ready.record()
            patch_step.replay()
            # The one host wait per patch; the rules run while the GPU does the patch step (the
            # staging buffer's copy preceded the characters, so the next patch may refill it).
            self._tokens_ready.synchronize()
        tokens = self._tokens_host.numpy()
        return {row: tokens[row].copy() for row in requests}

    def accept(self, rows: Sequence[int]) -> None:
        # Applied on the device at the start of the next patch (by whichever graphs run it).
        self._accepted[[self._slot[row] for row in rows]] = True

    def free(self, row: int) -> None:
        self._accepted[self._slot[row]] = False

    def close(self) -> None:
        if self._tokens_ready is not None:  # the last patch step may still run in the graphs' memory
            torch.cuda.synchronize(self.device)
        self._graphs = None
        if self._lone is not None:
            self._lone._graphs = None
        self._prefill_graphs.clear()

    # ---- one row on its own ------------------------------------------------------------------
    _ROW_BUFFERS = ("position", "hidden", "hidden_next", "_inputs", "uniforms", "forced", "forced_mask",
                    "top_k", "top_p", "inv_temperature", "tokens", "_staging", "_tokens_host", "_accepted",
                    "_keep", "x", "qkv", "attn", "mlp", "logits")

    def _row0_view(self) -> "FastExecutor":
        """A one-row executor over row 0 of these buffers (views: the same memory), with graphs
        of its own. It applies only row 0's pending accept; the other rows' wait for the next
        patch of every row."""
        view = copy.copy(self)
        view.rows, view._slot, view._lone, view._graphs = 1, [0], None, None
        view._prefill_graphs = {}  # contexts load through this executor's graphs
        for name in self._ROW_BUFFERS:
            if hasattr(self, name):  # the fused buffers exist only on the fused path
                setattr(view, name, getattr(self, name)[:1])
        view.patch_kv = [kv[:1] for kv in self.patch_kv]
        view.char_kv = [kv[:1] for kv in self.char_kv]
        return view

    @torch.no_grad()
    def _to_row0(self, slot: int) -> None:
        """Buffer row ``slot`` trades its state (caches, position, hidden states, pending
        accept) with buffer row 0, and the engine rows that map to them trade places."""
        if slot == 0:
            return
        pair, back = [0, slot], [slot, 0]
        for t in (*self.patch_kv, self.position, self.hidden, self.hidden_next):
            t[pair] = t[back]  # in place: the captured graphs keep reading the same memory
        self._accepted[pair] = self._accepted[back]
        a, b = self._slot.index(0), self._slot.index(slot)
        self._slot[a], self._slot[b] = slot, 0

    # ---- device work -------------------------------------------------------------------------
    def _linear(self, layer: Conv1D, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        return self.fast.linear(layer, x, gelu)

    def _unpack(self) -> None:
        """The packed host inputs into the buffers the samplers read (inside the captured graph)."""
        n, packed = PATCH_SIZE, self._inputs
        self.forced.copy_(packed[:, n : 2 * n])
        self.forced_mask.copy_(packed[:, 2 * n : 3 * n] != 0)
        self.top_k.copy_(packed[:, 3 * n])
        self.top_p.copy_(packed[:, 3 * n + 1].view(torch.float64))
        self.inv_temperature.copy_(packed[:, 3 * n + 2].view(torch.float64))
        # The last patch of each accepted row joins its context.
        self._keep.copy_(packed[:, 3 * n + 3] != 0)
        self.position += self._keep.long()
        self.hidden.copy_(torch.where(self._keep[:, None], self.hidden_next, self.hidden))

    @torch.no_grad()
    def _attempt(self) -> None:
        """Sample one patch per row from ``hidden`` and run its patch-level step at ``position``
        (keys/values written in place; ``hidden_next`` holds the result until accepted)."""
        self._chars()
        self._patch()

    @torch.no_grad()
    def _chars(self) -> None:
        """The accepts, then one patch's characters for every row into ``tokens``."""
        self._unpack()
        if self.fast.fused:
            self._chars_fused()
            return
        char = self.model.char_level_decoder.base
        tf = char.transformer
        for c in range(PATCH_SIZE):
            x = self.hidden[:, None] if c == 0 else tf.wte(self.tokens[:, c - 1])[:, None]
            x = x + tf.wpe.weight[c]
            for block, kv in zip(tf.h, self.char_kv):
                q, new = _attention_inputs(block, x, self._linear)
                kv[:, :, :, c] = new[:, :, :, 0]
                attn = F.scaled_dot_product_attention(q, kv[:, 0, :, : c + 1], kv[:, 1, :, : c + 1])
                x = _finish(block, x, attn, self._linear)
            logits = char.lm_head(tf.ln_f(x))[:, 0]
            if self.fast.sample_into is not None:  # one kernel: draw (or take the forced id) into tokens[:, c]
                self.fast.sample_into(logits, self.uniforms[:, c], self.forced[:, c], self.forced_mask[:, c],
                                      self.tokens[:, c], self._params)
            else:
                sampled = sample_torch(logits, self.uniforms[:, c], *self._params)
                self.tokens[:, c] = torch.where(self.forced_mask[:, c], self.forced[:, c], sampled)

    @torch.no_grad()
    def _patch(self) -> None:
        """The patch-level step of ``tokens`` at ``position``: keys and values in place, the new
        hidden state in ``hidden_next``."""
        if self.fast.fused:
            self._patch_fused()
        else:
            self.hidden_next.copy_(self._patch_step(self._patch_tokens()))

    def _patch_tokens(self) -> torch.Tensor:
        """The sampled patches as they enter the context: everything after the first eos is pad."""
        is_eos = self.tokens == EOS_ID
        return torch.where(torch.cumsum(is_eos, 1) - is_eos.long() > 0, 0, self.tokens)

    def _fused_layer(self, block: Block, kv: torch.Tensor, position: torch.Tensor | int) -> None:
        """One block on the residual stream ``self.x`` in five kernels (decode_kernels.py)."""
        packed = self.fast.packed
        packed[block.attn.c_attn](self.x, ln=block.ln_1, out=self.qkv)
        self.fast.kernels.decode_attention(self.qkv, kv, self.attn, position)
        packed[block.attn.c_proj](self.attn, residual=self.x)
        packed[block.mlp.c_fc](self.x, ln=block.ln_2, gelu=True, out=self.mlp)
        packed[block.mlp.c_proj](self.mlp, residual=self.x)

    def _chars_fused(self) -> None:
        char = self.model.char_level_decoder.base
        tf = char.transformer
        self.x.copy_(self.hidden + tf.wpe.weight[0])
        for c in range(PATCH_SIZE):
            for block, kv in zip(tf.h, self.char_kv):
                self._fused_layer(block, kv, c)
            self.fast.packed[char.lm_head](self.x, ln=tf.ln_f, out=self.logits)
            # The sampler also writes the next step's input embedding into x.
            embed = (tf.wte.weight, tf.wpe.weight[c + 1], self.x) if c < PATCH_SIZE - 1 else None
            self.fast.sample_into(self.logits, self.uniforms[:, c], self.forced[:, c], self.forced_mask[:, c],
                                  self.tokens[:, c], self._params, embed)

    def _patch_fused(self) -> None:
        patch = self._patch_tokens()
        decoder = self.model.patch_level_decoder
        position = self.position.clamp(max=self.config.patch_length - 1)
        self.x.copy_(decoder.embed(patch[:, None])[:, 0] + decoder.base.wpe(position))
        for block, kv in zip(decoder.base.h, self.patch_kv):
            self._fused_layer(block, kv, position)
        weight, bias, eps = self._patch_ln_f
        self.hidden_next.copy_(F.layer_norm(self.x, (self.x.shape[-1],), weight, bias, eps))

    def _patch_step(self, patch: torch.Tensor) -> torch.Tensor:
        decoder = self.model.patch_level_decoder
        base = decoder.base
        # A finished row can sit at full capacity; clamp so its (ignored) write stays in bounds.
        position = self.position.clamp(max=self.config.patch_length - 1)
        x = decoder.embed(patch[:, None]) + base.wpe(position)[:, None]
        b, heads = self.rows, self.config.num_heads
        index = position.view(b, 1, 1, 1, 1).expand(b, 2, heads, 1, 64)
        visible = (torch.arange(self.config.patch_length, device=self.device)[None] <= position[:, None])
        mask = visible[:, None, None]  # [B, 1, 1, capacity]
        for block, kv in zip(base.h, self.patch_kv):
            q, new = _attention_inputs(block, x, self._linear)
            kv.scatter_(3, index, new)
            x = _finish(block, x, F.scaled_dot_product_attention(q, kv[:, 0], kv[:, 1], attn_mask=mask), self._linear)
        return base.ln_f(x)[:, 0]

    @torch.no_grad()
    def _prefill(self, row: int, patches: np.ndarray) -> None:
        """Load one row's context: write its keys/values at 0..n-1, set its hidden and position.
        With CUDA graphs, a graph per power-of-two length (all captured when the executor is made)
        replaces some three hundred small launches: a service loads a context for every piece it takes."""
        if not self.graph_enabled:
            ids = torch.as_tensor(patches, device=self.device)
            self._prefill_rows(ids[None], torch.tensor([row], device=self.device),
                               torch.tensor([len(patches) - 1], device=self.device))
            return
        n = len(patches)
        length = min(1 << (n - 1).bit_length(), self.config.patch_length)
        self._prefill_copied[length].synchronize()
        host = self._prefill_staging[length].numpy()
        host[:] = 0  # pad patches after the context: causal attention keeps them out of it
        host[:n] = patches
        host[-1, :2] = row, n - 1
        self._prefill_inputs[length].copy_(self._prefill_staging[length], non_blocking=True)
        self._prefill_copied[length].record()
        self._prefill_graphs[length].replay()

    def _prefill_rows(self, ids: torch.Tensor, row: torch.Tensor, last: torch.Tensor) -> None:
        """ids [1, length, 16] into ``row`` ([1] tensor); the row's hidden is the one at ``last``
        ([1] tensor, the context's last patch), its next position last + 1."""
        decoder = self.model.patch_level_decoder
        length = ids.shape[1]
        x = decoder.embed(ids) + decoder.base.wpe.weight[:length]
        for block, kv in zip(decoder.base.h, self.patch_kv):
            q, new = _attention_inputs(block, x, self._linear)
            kv[:, :, :, :length].index_copy_(0, row, new.to(kv.dtype))
            x = _finish(block, x, F.scaled_dot_product_attention(q, new[:, 0], new[:, 1], is_causal=True), self._linear)
        self.hidden.index_copy_(0, row, decoder.base.ln_f(x)[0].index_select(0, last).to(self.hidden.dtype))
        self.position.index_copy_(0, row, last + 1)

    @torch.no_grad()
    def _capture_prefill(self, length: int) -> None:
        """Capture the context load of ``length`` patches (one extra patch row carries the row
        index and the context's last position): warmed up on row 0, whose state is restored."""
        pinned = torch.zeros(length + 1, PATCH_SIZE, dtype=torch.long, pin_memory=True)
        buffer = torch.zeros(length + 1, PATCH_SIZE, dtype=torch.long, device=self.device)
        ids, meta = buffer[None, :length], buffer[length]
        row, last = meta[0:1], meta[1:2]
        # What the warm-up writes: row 0's hidden, position and first ``length`` cache positions.
        written = [self.hidden[:1], self.position[:1], *(kv[:1, :, :, :length] for kv in self.patch_kv)]
        saved = [t.clone() for t in written]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._prefill_rows(ids, row, last)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):  # see _capture
            self._prefill_rows(ids, row, last)
        for t, old in zip(written, saved):
            t.copy_(old)
        self._prefill_staging[length], self._prefill_inputs[length] = pinned, buffer
        self._prefill_graphs[length], self._prefill_copied[length] = graph, torch.cuda.Event()

    def _capture(self, pool: tuple | None = None) -> None:
        """Warm up on a side stream, then capture one patch for every row: the characters, then
        the patch step, in one memory pool (replayed in that order). Done when the executor is
        made (its buffers are fixed, their contents do not matter), so engines made one after
        another never capture while another engine's thread runs GPU work."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        saved = [t.clone() for t in (self.hidden, self.position)]
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._attempt()
        torch.cuda.current_stream().wait_stream(stream)
        chars, patch_step = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # Our own stream: torch.cuda.graph's default capture stream is made once per process, on
        # whichever GPU captured first, so a second GPU's engine would capture onto the first's.
        # thread_local: in the default (global) mode a capture fails every other thread's
        # unsafe CUDA calls, and its own with them.
        # ``pool``: a lone row's graphs share the memory pool of every row's (never run at once).
        with torch.cuda.graph(chars, pool=pool, stream=stream, capture_error_mode="thread_local"):
            self._chars()
        with torch.cuda.graph(patch_step, pool=chars.pool(), stream=stream, capture_error_mode="thread_local"):
            self._patch()
        self._graphs = chars, patch_step  # only a whole capture is kept (a failed one is tried again)
        self.hidden.copy_(saved[0])
        self.position.copy_(saved[1])
        torch.cuda.current_stream().synchronize()

    @property
    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.top_k, self.top_p, self.inv_temperature
