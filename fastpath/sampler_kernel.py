"""The published sampling rule as one Triton kernel per character (CUDA only).

`executor.sample_torch` takes ~25 small kernels per character; in a CUDA graph each costs a
launch, and 16 characters per patch make the sampler a large share of a patch. This kernel does
softmax -> top-k -> top-p -> temperature -> inverse-CDF draw for one row per program, in float64,
with the same stable tie order as the numpy sampler (rank = how many ids come before an id), and
writes the chosen (or forced) id straight into the patch's token buffer.

A program is four warps (one draw with the next embedding: 6.2 us on an H200 against 7.5 with
sixteen and 12.2 with one, `decode_kernel_sweep.py --sampler-only`); the [V, V] rank
comparison runs in column chunks to fit them."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .decode_kernels import _after_producer, pdl_enabled, pdl_launch


@triton.jit
def _sample_row(logits_ptr, logits_stride, u_ptr, u_stride, forced_ptr, mask_ptr, fm_stride, out_ptr, out_stride,
                top_k_ptr, top_p_ptr, inv_temperature_ptr, wte_ptr, wpe_ptr, x_ptr, x_stride, H,
                V: tl.constexpr, CHUNK: tl.constexpr, EMBED: tl.constexpr, BLOCK_H: tl.constexpr,
                USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    i = tl.arange(0, V)
    top_k = tl.load(top_k_ptr + row)  # each row's own sampling settings
    top_p = tl.load(top_p_ptr + row)
    inv_temperature = tl.load(inv_temperature_ptr + row)
    _after_producer(USE_PDL)
    logit = tl.load(logits_ptr + row * logits_stride + i).to(tl.float32)
    z = logit.to(tl.float64)
    e = tl.exp(z - tl.max(z, 0))  # the numpy rule's weights: the top one exactly 1.0
    # rank: how many ids come before an id in the stable descending order (a higher logit, or
    # equal and a lower id): float32 logits make the [V, V] comparison half the registers of
    # float64 weights. The comparison in column chunks keeps four warps' registers in bounds.
    rank = tl.zeros([V], dtype=tl.int32)
    for start in tl.static_range(0, V, CHUNK):
        j = start + tl.arange(0, CHUNK)
        other = tl.load(logits_ptr + row * logits_stride + j).to(tl.float32)
        before = (other[None, :] > logit[:, None]) | ((other[None, :] == logit[:, None]) & (j[None, :] < i[:, None]))
        rank += tl.sum(before.to(tl.int32), 1)
    kept = tl.where(top_k == 0, V, top_k)
    keep = rank < kept
    q = tl.where(keep, e, 0.0)
    # The mass ranked strictly before each id and the kept total, as running sums in rank order
    # (numpy's cumsum order), walking the kept ranks (top_k of them).
    mass_before = tl.zeros([V], dtype=tl.float64)
    total = tl.sum(tl.zeros([V], dtype=tl.float64), 0)
    for r in range(0, kept):
        q_r = tl.sum(tl.where(rank == r, q, 0.0), 0)
        mass_before += tl.where(rank > r, q_r, 0.0)
        total += q_r
    keep = keep & (mass_before <= top_p * total)
    w = tl.where(keep, tl.exp(tl.log(tl.where(keep, q, 1.0)) * inv_temperature), 0.0)
    cdf = tl.cumsum(w, 0)
    u = tl.load(u_ptr + row * u_stride).to(tl.float64) * tl.max(cdf, 0)
    drawn = tl.minimum(tl.sum((cdf <= u).to(tl.int32), 0), V - 1)
    forced = tl.load(forced_ptr + row * fm_stride)
    use_forced = tl.load(mask_ptr + row * fm_stride) != 0
    token = tl.where(use_forced, forced, drawn.to(tl.int64))
    tl.store(out_ptr + row * out_stride, token)
    if EMBED:  # the next char step's input, wte[token] + wpe[next position], saves a launch
        h = tl.arange(0, BLOCK_H)
        emb = tl.load(wte_ptr + token * H + h, mask=h < H, other=0.0).to(tl.float32)
        emb += tl.load(wpe_ptr + h, mask=h < H, other=0.0).to(tl.float32)
        tl.store(x_ptr + row * x_stride + h, emb.to(x_ptr.dtype.element_ty), mask=h < H)


WARPS = 4  # a program's warps (module doc)


def sample_into(logits: torch.Tensor, u: torch.Tensor, forced: torch.Tensor, forced_mask: torch.Tensor,
                out: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                embed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """out[b] = forced[b] if forced_mask[b] else the sampled id of logits[b] (u[b] its uniform).
    All arguments are 1-D per row (columns of larger buffers are fine: strides are honoured);
    ``params`` = (top_k int64, top_p float64, 1 / temperature float64), contiguous [B] each.
    With ``embed`` = (wte [V, H], wpe_row [H], x [B, H]): also x[b] = wte[out[b]] + wpe_row."""
    rows, vocab = logits.shape
    wte, wpe_row, x = embed if embed is not None else (logits, logits, logits)
    h = wte.shape[1] if embed is not None else 1
    _sample_row[(rows,)](logits, logits.stride(0), u, u.stride(0), forced, forced_mask.view(torch.uint8),
                         forced.stride(0), out, out.stride(0), *params, wte, wpe_row, x, x.stride(0), h, V=vocab,
                         CHUNK=min(32, vocab), EMBED=embed is not None, BLOCK_H=triton.next_power_of_2(h),
                         USE_PDL=pdl_enabled(), num_warps=WARPS, **pdl_launch())
