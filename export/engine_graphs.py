"""Engine-ready graphs: fixed-capacity KV caches, one call per patch for every row, sampling in the graph.

Two graphs, written beside the step graphs when ``export --layout engine`` asks for them:

``patch_engine``: one whole patch for every row, no control flow and no data-dependent shape, so
one captured CUDA graph (ONNX Runtime ``enable_cuda_graph``, a TensorRT enqueue) serves every patch::

    uniforms [rows, 16] f64, forced [rows, 16] i64, forced_mask [rows, 16] bool,
    top_k [rows] i64 (128 = off), top_p [rows] f64, inv_temperature [rows] f64, accept [rows] bool,
    position [rows] i64, hidden [rows, H] f32, hidden_next [rows, H] f32,
    past_key_values.{i}.key/value [rows, heads, capacity, 64]
      -> tokens [rows, 16] i64, position_out, hidden_out, hidden_next_out, present.{i}.key/value

It first applies the last call's accepts (an accepted row's position advances and ``hidden_next``
becomes its ``hidden``), then runs the 16 char steps, each drawing its character from the row's
uniform with the published rule in float64 (the numpy rule's own sums, see ``sample``),
or taking the forced one; then the patch step of the new patch at ``position``, whose keys and
values a ScatterND writes into the cache there (in place where the runner binds ``present`` to
the ``past`` buffer). Its hidden state waits in ``hidden_next`` until the host accepts the patch.

A CPU form of ``patch_engine`` (``patch_engine.cpu.onnx``, the manifest entry's ``cpu_file``)
has the same IO and runs ONNX Runtime's fused attention (a CPU pays per node). Each patch-step
layer's attention is one GroupQueryAttention node: it writes the row's key and value into the
cache at the row's position (in place when the runner binds ``present`` to ``past``) and reads
positions 0 .. that position only (reading a 2048-patch cache for a 257-patch context was a
third of NotaGen-small's patch on a CPU). Each char step's attention is one MultiHeadAttention
node that appends to its own past (ten nodes otherwise). Its draws sort and weigh only as many
ranks as the call's largest top-k (``sample``; 9 by default, not 128: 3% of a demo patch on a
CPU). That count is the one shape computed from data; the fp16 variant's copy of the form fixes
it at 128 (engines/quantize.py), so ONNX Runtime CUDA runs that copy in a CUDA graph
(GroupQueryAttention has fp16 CUDA kernels only; fp32 runs the fixed form there). Chars 2..16
take their first layer's query, key and value from a table made at export (a character at a
known place: ``ln_1`` and the product of each of the 128, for each place; 6% of a demo patch),
so quantized variants keep those in float. TensorRT plans need the fixed form, which keeps to
standard ONNX ops.

``context_loader``: a row's whole context, ``patches [1, n, 16]`` and ``row [1]`` plus the state
-> the state with that row's caches at 0..n-1, its hidden state and position replaced.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from notagen_trt.config import EOS_ID, HEAD_DIM, PATCH_SIZE, VOCAB_SIZE, ModelConfig

from .model import Block, NotaGenModel
from .trace_ops import CacheAttention as _CacheAttention
from .trace_ops import ExclusiveCumSum as _ExclusiveCumSum
from .trace_ops import FirstColumns as _FirstColumns
from .trace_ops import PastAttention as _PastAttention
from .trace_ops import Reshape as _Reshape
from .trace_ops import TopRanks as _TopRanks
from .trace_ops import gelu_tanh as _gelu_tanh
from .trace_ops import linear as _linear

class _ScatterND(torch.autograd.Function):
    """ONNX ScatterND (a copy of ``data`` with ``updates`` at ``indices``): traced as the one node,
    which ONNX Runtime runs in place when the output is bound to the input's buffer."""

    @staticmethod
    def forward(ctx, data, indices, updates):  # no annotations: the tracer chokes on them
        out = data.clone()
        out[tuple(indices.unbind(-1))] = updates
        return out

    @staticmethod
    def symbolic(g, data, indices, updates):
        return g.op("ScatterND", data, indices, updates)


def top_k_mask(top_k: torch.Tensor) -> torch.Tensor:
    """Which ranks each row's top-k keeps (top_k [rows], 128 = off) -> [rows, 128]; made once per
    call and shared by the 16 draws."""
    return torch.arange(VOCAB_SIZE)[None] < top_k[:, None]


def ranks_of_the_call(top_k: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The CPU form's draw settings, made once a call (``sample``): the top-k mask over the ranks
    every row needs [rows, 1, ranks], those ranks [1] (the largest top-k) and zeros [rows, 1, 128]
    in float64 (``uniforms`` [rows, ...] float64 gives the rows)."""
    ranks = _Reshape.apply(top_k.max(), [1])
    blank = uniforms[:, :1, None] * torch.zeros(VOCAB_SIZE, dtype=torch.float64)  # u is finite: 0.0
    return _FirstColumns.apply(top_k_mask(top_k), ranks)[:, None], ranks, blank


def sample(logits: torch.Tensor, u: torch.Tensor, in_top_k: torch.Tensor, top_p: torch.Tensor,
           inv_temperature: torch.Tensor, ranks: torch.Tensor | None = None,
           blank: torch.Tensor | None = None) -> torch.Tensor:
    """runtime.sampling.sample for every row at once (logits [rows, 128] or [rows, 1, 128]; u,
    top_p, inv_temperature [rows, 1] or [rows, 1, 1] and ``top_k_mask`` shaped to broadcast
    alike) -> ids [rows, 1], in the numpy rule's float64 values: each kept weight exp(logit - the
    top logit) in rank order, top-k, top-p on running sums in rank order (CumSum, as numpy's
    cumsum adds), temperature, inverse CDF. Positions past top-k are zeroed rather than dropped;
    ties rank towards the lower id (TopK's rule and the reference's).

    ``ranks`` (the CPU form): a [1] tensor at least every row's top-k; only that many ranks are
    sorted and weighed (``in_top_k`` covers them alone), then scattered into ``blank``, zeros
    shaped as the logits in float64. Ranks past every row's top-k weigh an exact 0, which adds
    nothing to a running sum, so the draws are the same; a CPU pays per element on 128."""
    zero = torch.tensor(0.0, dtype=torch.float64)
    if ranks is None:
        ranked, order = torch.topk(logits, VOCAB_SIZE, dim=-1)
    else:
        ranked, order = _TopRanks.apply(logits, ranks)
    ranked = ranked.double()
    ranked = torch.where(in_top_k, torch.exp(ranked - ranked[..., :1]), zero)
    total = torch.cumsum(ranked, dim=-1)[..., -1:]
    keep = _ExclusiveCumSum.apply(ranked) <= top_p * total  # mass ranked strictly before
    weights = torch.pow(torch.where(keep, ranked, zero), inv_temperature)
    # Back in id order: with all 128 ranks ``order`` is a permutation, so the scatter overwrites
    # all of ``ranked``; with fewer, the ids not written stay ``blank``'s zeros.
    cdf = torch.cumsum((ranked if blank is None else blank).scatter(-1, order, weights), dim=-1)
    # The first id whose cdf exceeds u * total, at most 127: the cdf never decreases, so counting
    # over the first 127 entries is numpy's min(count, 127).
    head, total = cdf.split([VOCAB_SIZE - 1, 1], dim=-1)
    return (head <= u * total).long().sum(dim=-1, keepdim=logits.dim() == 2)


def _finish(block: Block, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [..., H] plus the attention output y [..., H] projected, then the MLP and its residual."""
    x = x + _linear(y, block.attn.c_proj)
    return x + _linear(_gelu_tanh(_linear(block.ln_2(x), block.mlp.c_fc)), block.mlp.c_proj)


def patch_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """A sampled patch as it enters the context: everything after its first eos is pad (0)."""
    is_eos = (tokens == EOS_ID).long()
    return torch.where(torch.cumsum(is_eos, dim=1) - is_eos > 0, torch.tensor(0), tokens)


class PatchEngine(nn.Module):
    """The ``patch_engine`` graph (module doc) as a traceable module. Each row has one query per
    step, so the heads are plain reshapes of a row's activations. ``cpu``: the CPU form, which
    also runs each char step's attention as ONNX Runtime's MultiHeadAttention node.

    A char step's activations are [rows, H] in the fixed form (ONNX Runtime and TensorRT fuse a
    2-D MatMul and its bias into one Gemm) and [rows, 1, H] in the CPU form (MultiHeadAttention
    wants a sequence axis; the int8 MatMulNBits there takes the bias itself)."""

    def __init__(self, model: NotaGenModel, cpu: bool = False) -> None:
        super().__init__()
        self.model = model
        self.cpu = cpu  # the CPU form (module doc)
        if cpu:
            # Chars 2..16 enter the first layer as a character at a known place: its ln_1 and
            # query-key-value product are a table row, one Gather instead of a LayerNorm and a product.
            tf = model.char_level_decoder.base.transformer
            block = tf.h[0]
            with torch.no_grad():
                tables = [_linear(block.ln_1(tf.wte.weight + tf.wpe.weight[c]), block.attn.c_attn)
                          for c in range(1, PATCH_SIZE)]
            self.register_buffer("first_qkv", torch.stack(tables), persistent=False)  # [15, 128, 3H]

    def forward(self, uniforms, forced, forced_mask, top_k, top_p, inv_temperature, accept,
                position, hidden, hidden_next, *past):
        config = self.model.config
        position = position + accept.long()
        hidden = torch.where(accept[:, None], hidden_next, hidden)
        if self.cpu:
            in_top_k, *ranked = ranks_of_the_call(top_k, uniforms)
        else:
            in_top_k, ranked = top_k_mask(top_k), []
        settings = (in_top_k, self._per_row(top_p), self._per_row(inv_temperature), *ranked)
        tokens = self._chars(hidden, uniforms, forced, forced_mask, settings)
        hidden_next, present = self._patch_step(patch_tokens(tokens), position.clamp(max=config.patch_length - 1), past)
        return (tokens, position, hidden, hidden_next, *present)

    def _chars(self, hidden, uniforms, forced, forced_mask, settings) -> torch.Tensor:
        """The 16 char steps; each step's inputs are columns of the per-patch settings, split once."""
        char = self.model.char_level_decoder.base
        tf = char.transformer
        heads = tf.h[0].attn.heads
        past: list[tuple | None] = [None] * len(tf.h)  # each layer's keys and values so far
        tokens: list[torch.Tensor] = []
        width = tf.wte.embedding_dim
        uniforms = uniforms[:, :, None] if self.cpu else uniforms
        columns = zip(uniforms.split(1, dim=1), forced.split(1, dim=1), forced_mask.split(1, dim=1))
        for c, (u, f, m) in enumerate(columns):
            if c == 0:
                x = (hidden[:, None] if self.cpu else hidden) + tf.wpe.weight[0]
            else:  # one Gather from wte + wpe[c], a constant ONNX Runtime folds at load
                x = nn.functional.embedding(tokens[-1], tf.wte.weight + tf.wpe.weight[c])
                x = x if self.cpu else _Reshape.apply(x, [-1, width])
            for i, block in enumerate(tf.h):
                if self.cpu and c > 0 and i == 0:
                    qkv = nn.functional.embedding(tokens[-1], self.first_qkv[c - 1])
                else:
                    qkv = _linear(block.ln_1(x), block.attn.c_attn)
                q, k, v = qkv.split(heads * HEAD_DIM, dim=-1)
                y, past[i] = self._attend(q, k, v, past[i], heads)
                x = _finish(block, x, y)
            drawn = sample(char.lm_head(tf.ln_f(x)), u, *settings)
            tokens.append(torch.where(m, f, drawn))
        return torch.cat(tokens, dim=1)

    def _per_row(self, t: torch.Tensor) -> torch.Tensor:
        """A per-row value [rows] shaped to broadcast against a char step's activations."""
        return t[:, None, None] if self.cpu else t[:, None]

    def _attend(self, q, k, v, past, heads):
        """One char step's attention (q, k, v shaped as the activations) over the row's earlier
        steps: the output and the keys and values so far (the CPU form's [rows, heads, n, 64]
        both; else keys transposed, [rows, heads, 64, n], so no step transposes them)."""
        key_shape = [-1, heads, 1, HEAD_DIM] if self.cpu else [-1, heads, HEAD_DIM, 1]
        if past is None:  # the first char sees only itself: softmax over one score is exactly 1
            return v, (_Reshape.apply(k, key_shape), _Reshape.apply(v, [-1, heads, 1, HEAD_DIM]))
        if self.cpu:
            y, keys, values = _PastAttention.apply(q, k, v, *past, heads)
            return y, (keys, values)
        keys_t = torch.cat([past[0], _Reshape.apply(k, key_shape)], dim=3)
        values = torch.cat([past[1], _Reshape.apply(v, [-1, heads, 1, HEAD_DIM])], dim=2)
        scores = _Reshape.apply(q, [-1, heads, 1, HEAD_DIM]) @ keys_t / math.sqrt(HEAD_DIM)
        return _Reshape.apply(torch.softmax(scores, dim=-1) @ values, [-1, heads * HEAD_DIM]), (keys_t, values)

    def _patch_step(self, patch: torch.Tensor, position: torch.Tensor, past: tuple[torch.Tensor, ...]):
        """The patch step of ``patch`` [rows, 16] at ``position`` [rows]: keys and values written
        into the caches there; the new hidden state [rows, H] and the caches."""
        decoder = self.model.patch_level_decoder
        base = decoder.base
        heads, capacity = base.h[0].attn.heads, self.model.config.patch_length
        x = decoder.embed(patch) + base.wpe(position)
        if self.cpu:
            return self._patch_step_cpu(x, position, past)
        # ScatterND indices [rows, heads, 3]: (row, head, position) per written [64] vector, from
        # elementwise ops only (no Shape-derived sizes: ONNX Runtime runs those on the CPU, and a
        # CUDA graph needs every node on the GPU).
        row_ids = torch.cumsum(position * 0 + 1, dim=0) - 1
        each_head = torch.ones(heads, dtype=torch.long)
        index = torch.stack([row_ids[:, None] * each_head, torch.arange(heads)[None] + 0 * row_ids[:, None],
                             position[:, None] * each_head], dim=-1)
        visible = (torch.arange(capacity)[None] <= position[:, None])[:, None, None]  # [rows, 1, 1, capacity]
        present = []
        for i, block in enumerate(base.h):
            q, k, v = _linear(block.ln_1(x), block.attn.c_attn).split(heads * HEAD_DIM, dim=-1)
            k_all = _ScatterND.apply(past[2 * i], index, _Reshape.apply(k, [-1, heads, HEAD_DIM]))
            v_all = _ScatterND.apply(past[2 * i + 1], index, _Reshape.apply(v, [-1, heads, HEAD_DIM]))
            present += [k_all, v_all]
            scores = _Reshape.apply(q, [-1, heads, 1, HEAD_DIM]) @ k_all.transpose(-1, -2) / math.sqrt(HEAD_DIM)
            scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
            x = _finish(block, x, _Reshape.apply(torch.softmax(scores, dim=-1) @ v_all, [0, -1]))
        return base.ln_f(x), present

    def _patch_step_cpu(self, x: torch.Tensor, position: torch.Tensor, past: tuple[torch.Tensor, ...]):
        """The CPU form's patch step on [rows, 1, H] activations: each layer's attention is one
        GroupQueryAttention node that writes the row's key and value at its position and reads
        positions 0 .. position only (module doc)."""
        base = self.model.patch_level_decoder.base
        heads = base.h[0].attn.heads
        # Each row reads up to its own position, whatever the total: the capacity, a constant, keeps
        # the node free of data-dependent inputs (a CUDA graph could hold it too).
        seqlens, total = position.int(), torch.tensor(self.model.config.patch_length, dtype=torch.int32)
        x = x[:, None]
        present = []
        for i, block in enumerate(base.h):
            q, k, v = _linear(block.ln_1(x), block.attn.c_attn).split(heads * HEAD_DIM, dim=-1)
            y, keys, values = _CacheAttention.apply(q, k, v, past[2 * i], past[2 * i + 1], seqlens, total, heads)
            present += [keys, values]
            x = _finish(block, x, y)
        return _Reshape.apply(base.ln_f(x), [-1, self.model.config.hidden_size]), present


class ContextLoader(nn.Module):
    """The ``context_loader`` graph (module doc) as a traceable module."""

    def __init__(self, model: NotaGenModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, patches, row, position, hidden, *past):
        decoder = self.model.patch_level_decoder
        base = decoder.base
        n, heads = patches.shape[1], base.h[0].attn.heads
        x = decoder.embed(patches)[0] + base.wpe.weight[:n]  # [n, H]
        steps = torch.arange(n)
        causal = steps[None] <= steps[:, None]
        # ScatterND indices [heads, n, 3]: (row, head, position) for positions 0 .. n - 1.
        index = torch.stack([row.expand(heads, n), torch.arange(heads)[:, None].expand(heads, n),
                             steps[None].expand(heads, n)], dim=-1)
        present = []
        for i, block in enumerate(base.h):
            q, k, v = (_Reshape.apply(z, [-1, heads, HEAD_DIM]).transpose(0, 1)
                       for z in _linear(block.ln_1(x), block.attn.c_attn).split(heads * HEAD_DIM, dim=-1))  # [heads, n, 64]
            present += [_ScatterND.apply(past[2 * i], index, k), _ScatterND.apply(past[2 * i + 1], index, v)]
            scores = (q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)).masked_fill(~causal, torch.finfo(q.dtype).min)
            x = _finish(block, x, _Reshape.apply((torch.softmax(scores, dim=-1) @ v).transpose(0, 1), [-1, heads * HEAD_DIM]))
        last = base.ln_f(x)[-1:]  # [1, H]
        mine = torch.arange(hidden.shape[0]) == row
        return (torch.where(mine, torch.zeros_like(position) + n, position), torch.where(mine[:, None], last, hidden),
                *present)


def _spec(name: str, dtype: str, shape: list[int | str]) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def _caches(config: ModelConfig) -> tuple[list[dict], list[dict]]:
    shape = ["rows", config.num_heads, config.patch_length, HEAD_DIM]
    inputs = [_spec(f"past_key_values.{i}.{part}", "float32", shape)
              for i in range(config.patch_num_layers) for part in ("key", "value")]
    outputs = [_spec(f"present.{i}.{part}", "float32", shape)
               for i in range(config.patch_num_layers) for part in ("key", "value")]
    return inputs, outputs


def _state(config: ModelConfig, suffix: str = "") -> list[dict]:
    h = config.hidden_size
    return [_spec("position" + suffix, "int64", ["rows"]), _spec("hidden" + suffix, "float32", ["rows", h]),
            _spec("hidden_next" + suffix, "float32", ["rows", h])]


def graph_specs(config: ModelConfig) -> dict[str, dict]:
    """Declared IO of both engine-ready graphs; ``rows`` and ``patches`` are the dynamic dims."""
    past, present = _caches(config)
    n = PATCH_SIZE
    settings = [_spec("uniforms", "float64", ["rows", n]), _spec("forced", "int64", ["rows", n]),
                _spec("forced_mask", "bool", ["rows", n]), _spec("top_k", "int64", ["rows"]),
                _spec("top_p", "float64", ["rows"]), _spec("inv_temperature", "float64", ["rows"]),
                _spec("accept", "bool", ["rows"])]
    return {
        "patch_engine": {
            "num_layers": config.patch_num_layers,
            "inputs": [*settings, *_state(config), *past],
            "outputs": [_spec("tokens", "int64", ["rows", n]), *_state(config, "_out"), *present],
            "max_positions": config.patch_length,
        },
        "context_loader": {
            "num_layers": config.patch_num_layers,
            "inputs": [_spec("patches", "int64", [1, "patches", n]), _spec("row", "int64", [1]),
                       *_state(config)[:2], *past],
            "outputs": [*_state(config, "_out")[:2], *present],
            "max_positions": config.patch_length,
        },
    }


def examples(config: ModelConfig, rows: int = 2) -> dict[str, tuple]:
    """Inputs to trace each graph with (2 rows and 3 patches: no dim specialised to 0 or 1)."""
    n, h = PATCH_SIZE, config.hidden_size
    past = [torch.zeros(rows, config.num_heads, config.patch_length, HEAD_DIM) for _ in range(2 * config.patch_num_layers)]
    state = (torch.zeros(rows, dtype=torch.long), torch.randn(rows, h), torch.randn(rows, h))
    settings = (torch.rand(rows, n, dtype=torch.float64), torch.zeros(rows, n, dtype=torch.long),
                torch.zeros(rows, n, dtype=torch.bool), torch.full((rows,), 9), torch.full((rows,), 0.9, dtype=torch.float64),
                torch.full((rows,), 1 / 1.2, dtype=torch.float64), torch.zeros(rows, dtype=torch.bool))
    return {"patch_engine": (*settings, *state, *past),
            "context_loader": (torch.randint(0, VOCAB_SIZE, (1, 3, n)), torch.tensor([1]), *state[:2], *past)}


def modules(model: NotaGenModel) -> dict[str, nn.Module]:
    """The traceable module of each engine-ready graph (manifest.ENGINE_GRAPHS)."""
    return {"patch_engine": PatchEngine(model), "context_loader": ContextLoader(model)}


def cpu_modules(model: NotaGenModel) -> dict[str, nn.Module]:
    """The graphs that have a CPU form (module doc), as traceable modules of that form."""
    return {"patch_engine": PatchEngine(model, cpu=True)}
