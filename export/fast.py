"""The fast PyTorch path: fixed-capacity KV caches, in-graph sampling and one CUDA graph per patch.

One replay of the captured graph generates a whole patch for every row of a batch: 16 char-level
steps, each sampling its character on the device from a host-drawn uniform (the numpy sampler's
rule, in float64), then the patch-level step that writes the patch's keys and values in place
at each row's own position. The host syncs once per patch, to read 16 characters per row.

On CUDA with Triton, fp16 and int8 weight-only steps run on the fused kernels of
``decode_kernels`` (five a layer, float32 residual stream); fp32 and the CPU run PyTorch ops,
which reproduce the reference exactly.

Rows are independent pieces: each has its own seed, position, stopping and context rebuild, so
a batch gives exactly the pieces the one-at-a-time loop gives (``runtime.generate``), and the
published rules (forced ``[r:0/`` prefix, EOS patch, limits, halving a full context) hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from notagen_trt.config import EOS_ID, PATCH_SIZE
from notagen_trt.runtime import codec
from notagen_trt.runtime.generate import GenerationConfig, Piece, halved_context, limit_reached
from notagen_trt.runtime.prompts import Prompt
from notagen_trt.runtime.sampling import SamplingParams

from .model import Block, Conv1D, NotaGenModel


def sample_torch(logits: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """runtime.sampling.sample on the device, float64: same truncation, ties and inverse CDF."""
    p = torch.softmax(logits.double(), dim=-1)
    ranked, order = torch.sort(p, dim=-1, descending=True, stable=True)
    rank = torch.arange(p.shape[-1], device=p.device)
    keep = rank < params.top_k if params.top_k else torch.ones_like(rank, dtype=torch.bool)
    ranked = torch.where(keep, ranked, 0.0)
    ranked = ranked / ranked.sum(-1, keepdim=True)
    keep = keep & ((torch.cumsum(ranked, -1) - ranked) <= params.top_p)
    keep[..., 0] = True
    ranked = torch.where(keep, ranked, 0.0) ** (1.0 / params.temperature)
    ranked = ranked / ranked.sum(-1, keepdim=True)
    probs = torch.zeros_like(p).scatter_(-1, order, ranked)
    cdf = torch.cumsum(probs, -1)
    return torch.clamp((cdf <= (u * cdf[..., -1])[..., None]).sum(-1), max=p.shape[-1] - 1)


Linear = Callable[[Conv1D, torch.Tensor, bool], torch.Tensor]


def dense(layer: Conv1D, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """x [..., in] @ weight + bias, with the MLP's bias-GELU fused into the GEMM (cuBLASLt
    epilogue on CUDA; the tanh GELU, as GPT-2's gelu_new)."""
    x2 = x.reshape(-1, x.shape[-1])
    y = torch._addmm_activation(layer.bias, x2, layer.weight, use_gelu=True) if gelu else torch.addmm(
        layer.bias, x2, layer.weight)
    return y.view(*x.shape[:-1], -1)


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
    """(export.decode_kernels, export.sampler_kernel) where Triton is installed, else None."""
    try:
        from . import decode_kernels, sampler_kernel
    except ImportError:  # no triton (CPU-only installs)
        return None
    return decode_kernels, sampler_kernel


class FastGenerator:
    """Generates a batch of pieces; ``graph=True`` (CUDA only) captures one patch per replay."""

    def __init__(self, model: NotaGenModel, batch: int = 1, device: str = "cuda", dtype: torch.dtype = torch.float16,
                 graph: bool | None = None, params: SamplingParams = SamplingParams(),
                 patch_length: int | None = None, weights: str = "float") -> None:
        if weights not in ("float", "int8"):
            raise ValueError(f"weights must be 'float' or 'int8', got {weights!r}")
        # fp16 (or int8 weight-only) on CUDA with Triton: the fused decode kernels, weights
        # repacked [out, in] on the host so the GPU never holds two copies. fp32 stays on the
        # PyTorch ops: it is the path that reproduces the reference exactly.
        triton_kernels = _triton_kernels() if torch.device(device).type == "cuda" else None
        kernels = triton_kernels[0] if triton_kernels else None
        self._kernels = kernels
        self.fused = kernels is not None and (dtype == torch.float16 or weights == "int8")
        if weights == "int8" and not self.fused:
            raise ValueError("int8 weights need a CUDA GPU and Triton (the fused decode kernels)")
        self._packed: dict[nn.Module, object] = {}
        if self.fused:
            model = model.eval().float()
            for module in model.modules():
                if isinstance(module, Conv1D):
                    self._packed[module] = kernels.PackedLinear(module.weight.data, module.bias.data,
                                                                int8=weights == "int8").to(device)
                    module.weight = nn.Parameter(torch.empty(0))  # the [in, out] copy is not needed
            lm_head = model.char_level_decoder.base.lm_head  # tied to wte, which stays for embedding
            self._packed[lm_head] = kernels.PackedLinear(lm_head.weight.data.t(), None,
                                                         int8=weights == "int8").to(device)
            workspace = kernels.RowsWorkspace(list(self._packed.values()), device)  # one, layers run in turn
            for packed in self._packed.values():
                packed.workspace = workspace
        self.model = model.eval().to(device=device, dtype=dtype)
        self.config, self.batch, self.device, self.params = model.config, batch, torch.device(device), params
        # The loop's PATCH_LENGTH: the model's, or less (tests use less to exercise halving).
        self.patch_length = min(patch_length or self.config.patch_length, self.config.patch_length)
        self.graph_enabled = self.device.type == "cuda" if graph is None else graph
        cfg, heads = self.config, self.config.num_heads
        zeros = lambda *shape, dt=dtype: torch.zeros(*shape, dtype=dt, device=device)  # noqa: E731
        # Per layer, keys and values side by side: [B, 2, heads, positions, 64].
        self.patch_kv = [zeros(batch, 2, heads, cfg.patch_length, 64) for _ in range(cfg.patch_num_layers)]
        self.char_kv = [zeros(batch, 2, heads, PATCH_SIZE, 64) for _ in range(cfg.char_num_layers)]
        self.position = zeros(batch, dt=torch.long)  # next patch position per row
        self.hidden = zeros(batch, cfg.hidden_size)  # hidden state of each row's last accepted patch
        self.hidden_next = zeros(batch, cfg.hidden_size)
        self.uniforms = zeros(batch, PATCH_SIZE, dt=torch.float64)
        self.forced = zeros(batch, PATCH_SIZE, dt=torch.long)
        self.forced_mask = zeros(batch, PATCH_SIZE, dt=torch.bool)
        self.tokens = zeros(batch, PATCH_SIZE, dt=torch.long)
        self._graph: torch.cuda.CUDAGraph | None = None
        # One Triton kernel per character where it can run, else sample_torch (CPU).
        self._sample_into = triton_kernels[1].sample_into if triton_kernels else None
        if self.fused:  # the fused steps' activations: a float32 residual stream, fp16 between kernels
            h = cfg.hidden_size
            self.x = zeros(batch, h, dt=torch.float32)
            self.qkv, self.attn, self.mlp = zeros(batch, 3 * h), zeros(batch, h), zeros(batch, 4 * h)
            self.logits = zeros(batch, self.model.char_level_decoder.base.lm_head.weight.shape[0], dt=torch.float32)
            ln_f = self.model.patch_level_decoder.base.ln_f
            self._patch_ln_f = (ln_f.weight.float(), ln_f.bias.float(), ln_f.eps)

    # ---- device work -------------------------------------------------------------------------
    def _linear(self, layer: Conv1D, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        packed = self._packed.get(layer)
        return packed(x, gelu=gelu) if packed is not None else dense(layer, x, gelu)

    @torch.no_grad()
    def _attempt(self) -> None:
        """Sample one patch per row from ``hidden`` and run its patch-level step at ``position``
        (keys/values written in place; ``hidden_next`` holds the result until accepted)."""
        if self.fused:
            self._attempt_fused()
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
            if self._sample_into is not None:  # one kernel: draw (or take the forced id) into tokens[:, c]
                self._sample_into(logits, self.uniforms[:, c], self.forced[:, c], self.forced_mask[:, c],
                                  self.tokens[:, c], self.params)
            else:
                sampled = sample_torch(logits, self.uniforms[:, c], self.params)
                self.tokens[:, c] = torch.where(self.forced_mask[:, c], self.forced[:, c], sampled)
        self.hidden_next.copy_(self._patch_step(self._patch_tokens()))

    def _patch_tokens(self) -> torch.Tensor:
        """The sampled patches as they enter the context: everything after the first eos is pad."""
        is_eos = self.tokens == EOS_ID
        return torch.where(torch.cumsum(is_eos, 1) - is_eos.long() > 0, 0, self.tokens)

    def _fused_layer(self, block: Block, kv: torch.Tensor, position: torch.Tensor | int) -> None:
        """One block on the residual stream ``self.x`` in five kernels (export/decode_kernels.py)."""
        packed = self._packed
        packed[block.attn.c_attn](self.x, ln=block.ln_1, out=self.qkv)
        self._kernels.decode_attention(self.qkv, kv, self.attn, position)
        packed[block.attn.c_proj](self.attn, residual=self.x)
        packed[block.mlp.c_fc](self.x, ln=block.ln_2, gelu=True, out=self.mlp)
        packed[block.mlp.c_proj](self.mlp, residual=self.x)

    def _attempt_fused(self) -> None:
        char = self.model.char_level_decoder.base
        tf = char.transformer
        self.x.copy_(self.hidden + tf.wpe.weight[0])
        for c in range(PATCH_SIZE):
            for block, kv in zip(tf.h, self.char_kv):
                self._fused_layer(block, kv, c)
            self._packed[char.lm_head](self.x, ln=tf.ln_f, out=self.logits)
            # The sampler also writes the next step's input embedding into x.
            embed = (tf.wte.weight, tf.wpe.weight[c + 1], self.x) if c < PATCH_SIZE - 1 else None
            self._sample_into(self.logits, self.uniforms[:, c], self.forced[:, c], self.forced_mask[:, c],
                              self.tokens[:, c], self.params, embed)
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
        b, heads = self.batch, self.config.num_heads
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
        """Load one row's context (eager): write its keys/values at 0..n-1, set its hidden."""
        decoder = self.model.patch_level_decoder
        ids = torch.as_tensor(patches, device=self.device)[None]
        n = ids.shape[1]
        x = decoder.embed(ids) + decoder.base.wpe.weight[:n]
        for block, kv in zip(decoder.base.h, self.patch_kv):
            q, new = _attention_inputs(block, x, self._linear)
            kv[row : row + 1, :, :, :n] = new
            x = _finish(block, x, F.scaled_dot_product_attention(q, new[:, 0], new[:, 1], is_causal=True), self._linear)
        self.hidden[row] = decoder.base.ln_f(x)[0, -1]
        self.position[row] = n

    def _replay(self) -> None:
        if not self.graph_enabled:
            self._attempt()
            return
        if self._graph is None:  # warm up on a side stream, then capture
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            saved = [t.clone() for t in (self.hidden, self.position)]
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._attempt()
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._attempt()
            self.hidden.copy_(saved[0])
            self.position.copy_(saved[1])
        self._graph.replay()

    # ---- the published loop, per row ---------------------------------------------------------
    def generate(self, prompt: Prompt | None, configs: list[GenerationConfig]) -> list[Piece]:
        if len(configs) != self.batch:
            raise ValueError(f"this generator holds {self.batch} rows; got {len(configs)} configs")
        rows = [_Row(cfg, prompt) for cfg in configs]
        for i, row in enumerate(rows):
            self._load(i, row, row.piece.text)
        while not all(r.done for r in rows):
            uniforms = np.zeros((self.batch, PATCH_SIZE))
            forced = np.zeros((self.batch, PATCH_SIZE), dtype=np.int64)
            mask = np.zeros((self.batch, PATCH_SIZE), dtype=bool)
            for i, row in enumerate(rows):
                if not row.done:  # a row draws exactly the uniforms the one-piece loop would
                    k = len(row.prefix)
                    forced[i, :k], mask[i, :k] = row.prefix, True
                    uniforms[i, k:] = row.rng.random(PATCH_SIZE - k)
            self.uniforms.copy_(torch.from_numpy(uniforms))
            self.forced.copy_(torch.from_numpy(forced))
            self.forced_mask.copy_(torch.from_numpy(mask))
            self._replay()
            tokens = self.tokens.cpu().numpy()  # the one host sync per patch
            accept = np.zeros(self.batch, dtype=bool)
            for i, row in enumerate(rows):
                if not row.done:
                    accept[i] = self._advance(i, row, tokens[i])
            keep = torch.from_numpy(accept).to(self.device)
            self.position += keep.long()
            self.hidden.copy_(torch.where(keep[:, None], self.hidden_next, self.hidden))
            for i, row in enumerate(rows):  # rebuilds after the accepted patches are in place
                if row.needs_rebuild:
                    row.needs_rebuild = False
                    self._rebuild(i, row)
        return [r.piece for r in rows]

    def _load(self, i: int, row: "_Row", text: str) -> None:
        patches, row.prefix = codec.encode_generate(text)
        row.prefix_in_text = True  # an open bar's start is already part of the piece's text
        row.context = len(patches)
        self._prefill(i, patches)

    def _advance(self, i: int, row: "_Row", patch: np.ndarray) -> bool:
        """Apply the published rules to row i's new patch; True if it joins the context."""
        piece, cfg = row.piece, row.config
        already = len(row.prefix) if row.prefix_in_text else 0
        row.prefix, row.prefix_in_text = [], False
        if not row.in_body and codec.decode_patch(patch).startswith("[r:"):
            row.in_body = True
            row.prefix = codec.to_ids(cfg.forced_body_prefix(), pad=False)
            return False  # regenerate from the same hidden state with the forced prefix
        piece.patches += 1
        if codec.is_eos_patch(patch):
            row.stop("eos")
            return False
        piece.text += codec.decode_patch(patch)[already:]
        row.context += 1
        if reason := limit_reached(piece, cfg, row.start):
            row.stop(reason)
        elif row.context >= self.patch_length:
            row.needs_rebuild = True
        return True

    def _rebuild(self, i: int, row: "_Row") -> None:
        text = halved_context(row.piece.text)
        if text is None:
            row.stop("context_full")
            return
        self._load(i, row, text)
        if row.context >= self.patch_length:
            row.stop("context_full")
        row.piece.rebuilds += 1


class _Row:
    def __init__(self, config: GenerationConfig, prompt: Prompt | None) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.piece = Piece(text="".join(prompt.lines()) if prompt else "")
        self.prefix: list[int] = []  # characters forced at the start of the next patch
        self.prefix_in_text = False  # True when they are the open bar of a rebuilt context
        self.in_body = False
        self.context = 0
        self.needs_rebuild = False
        self.start = time.perf_counter()

    @property
    def done(self) -> bool:
        return bool(self.piece.stop_reason)

    def stop(self, reason: str) -> None:
        self.piece.stop_reason = reason
        self.piece.seconds = time.perf_counter() - self.start

