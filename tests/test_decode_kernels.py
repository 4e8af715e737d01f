"""The fused decode kernels (fastpath/decode_kernels.py) against PyTorch, and the fast path built
on them against the reference model. Triton kernels need a CUDA GPU."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.sampling import SamplingParams

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the Triton kernels")]


def layer_norm(k: int) -> torch.nn.LayerNorm:
    ln = torch.nn.LayerNorm(k).cuda()
    ln.weight.data.normal_(1.0, 0.1)
    ln.bias.data.normal_(0.0, 0.1)
    return ln


@pytest.mark.parametrize("rows", [1, 3, 16, 40, 130])  # one row, batches, 16 rows a launch, a prefill
@pytest.mark.parametrize("int8", [False, True])
def test_linear_with_layernorm_gelu_and_residual(rows, int8):
    from notagen_trt.fastpath.decode_kernels import PackedLinear

    torch.manual_seed(rows)
    k, n = 192, 576
    w, b = torch.randn(k, n) * 0.05, torch.randn(n) * 0.1
    lin = PackedLinear(w, b, int8=int8).to("cuda")
    # What the kernel must compute: its own stored weights (int8 rounding is the recipe's, not an error).
    w_used = (lin.weight.float() * (lin.scale.float()[:, None] if int8 else 1.0)).t()
    if int8:
        bound = w.abs().amax(0).max()  # half a step of the widest channel, plus the fp16 scale's rounding
        assert (w_used.cpu() - w).abs().max() <= bound / 254 + bound * 1e-3
    ln = layer_norm(k)
    x = torch.randn(rows, k, device="cuda") * 3 + 0.5  # offset: the LayerNorm mean matters
    want = F.gelu(ln(x) @ w_used + lin.bias.float(), approximate="tanh")
    got = lin(x, ln=ln, gelu=True, out_dtype=torch.float32)
    assert (got - want).abs().max().item() < 2e-2  # fp16 activations into tensor cores
    residual = torch.randn(rows, n, device="cuda")
    h = torch.randn(rows, k, device="cuda").half()
    want = residual + h.float() @ w_used + lin.bias.float()
    lin(h, residual=residual)  # accumulates in place
    assert (residual - want).abs().max().item() < 2e-2


@pytest.mark.parametrize("rows", [16, 40])  # 40: three launches, 16 rows each, back to back
@pytest.mark.parametrize("int8", [False, True])
def test_split_rows_are_deterministic(int8, rows):
    """2-16 rows split the input over programs; whichever finishes last adds the partials, always
    in split order: repeated calls give the same bits, and the ticket counters end at zero (also
    between the launches of more rows, which share the scratch)."""
    from notagen_trt.fastpath.decode_kernels import PackedLinear

    torch.manual_seed(0)
    k, n = 5120, 1280  # NotaGen-X's MLP output projection: the deepest split
    lin = PackedLinear(torch.randn(k, n) * 0.02, torch.randn(n) * 0.1, int8=int8).to("cuda")
    assert lin.rows_tile()[3] > 1
    x = torch.randn(rows, k, device="cuda").half()
    first = lin(x, out_dtype=torch.float32)
    w_used = (lin.weight.float() * (lin.scale.float()[:, None] if int8 else 1.0)).t()
    assert (first - (x.float() @ w_used + lin.bias.float())).abs().max().item() < 2e-2
    for _ in range(50):
        assert torch.equal(lin(x, out_dtype=torch.float32), first)
    assert not lin.workspace.tickets.any()


@pytest.mark.parametrize("position", [0, 7, "rows"])
def test_decode_attention_writes_the_cache_and_attends(position):
    from notagen_trt.fastpath.decode_kernels import decode_attention

    torch.manual_seed(0)
    b, heads, capacity, d = 3, 4, 100, 64
    cache = torch.randn(b, 2, heads, capacity, d, device="cuda").half()
    qkv = torch.randn(b, 3 * heads * d, device="cuda").half()
    out = torch.empty(b, heads * d, device="cuda").half()
    positions = torch.tensor([0, 65, 99], device="cuda") if position == "rows" else torch.full((b,), position)
    want_cache = cache.clone()
    decode_attention(qkv, cache, out, positions if position == "rows" else position)
    for i in range(b):
        p = int(positions[i])
        q, k, v = qkv[i].view(3, heads, d)
        want_cache[i, 0, :, p], want_cache[i, 1, :, p] = k, v
        want = F.scaled_dot_product_attention(q[:, None].float(), want_cache[i, 0, :, : p + 1].float(),
                                              want_cache[i, 1, :, : p + 1].float())
        assert (out[i].float() - want[:, 0].reshape(-1)).abs().max().item() < 5e-3
    assert torch.equal(cache, want_cache)  # the new keys and values, and nothing else


def test_sampler_writes_the_next_embedding():
    from notagen_trt.fastpath.sampler_kernel import sample_into
    from notagen_trt.runtime.sampling import sample

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 128)).astype(np.float32) * 3
    u = rng.random(5)
    wte, wpe_row = torch.randn(128, 192, device="cuda").half(), torch.randn(192, device="cuda").half()
    tokens = torch.zeros(5, dtype=torch.long, device="cuda")
    x = torch.zeros(5, 192, device="cuda")
    sample_into(torch.from_numpy(logits).cuda(), torch.from_numpy(u).cuda(), tokens.clone(),
                torch.zeros(5, dtype=torch.bool, device="cuda"), tokens, _row_params(SamplingParams(), 5), (wte, wpe_row, x))
    assert np.array_equal(tokens.cpu().numpy(), sample(logits, u, SamplingParams()))
    assert torch.allclose(x, wte[tokens].float() + wpe_row.float())


def _row_params(params: SamplingParams, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.full((rows,), params.top_k, device="cuda"),
            torch.full((rows,), params.top_p, dtype=torch.float64, device="cuda"),
            torch.full((rows,), 1.0 / params.temperature, dtype=torch.float64, device="cuda"))


@pytest.mark.parametrize("precision", ["fp16", "int8-wo"])
def test_fused_fast_path_follows_the_model(trained, precision):
    """A whole fused patch (16 char steps, sampling, the patch step) against the fp32 model."""
    from notagen_trt.fastpath.executor import FastBackend

    backend = FastBackend(copy.deepcopy(trained), "cuda", precision)
    gen = backend.executor(2, graph=False)
    weights = "int8" if precision == "int8-wo" else "float"
    assert backend.fused
    context = torch.randint(32, 127, (6, 16))
    model = copy.deepcopy(trained).float().cuda()
    hidden, _ = model.patch_level_decoder(context[None].cuda())
    for row in range(2):
        gen.load(row, context.numpy())
    assert (gen.hidden.float() - hidden[0, -1]).abs().max().item() < 5e-2
    gen.uniforms.uniform_()
    gen.uniforms[1] = gen.uniforms[0]
    gen._attempt()
    tokens = gen.tokens.clone()
    assert torch.equal(tokens[0], tokens[1])  # same context, same uniforms
    # The last char step's logits, and the patch step's hidden state, from the fp32 model.
    logits, _ = model.char_level_decoder(torch.cat([tokens[:1, :1], tokens[:1, :-1]], 1), hidden[:, -1])
    tol = 0.1 if weights == "int8" else 3e-2
    assert (gen.logits[0] - logits[0, -1]).abs().max().item() < tol
    patch = tokens[:1].cpu().clone()
    eos = (patch == 2).cumsum(1) - (patch == 2).long() > 0
    patch[eos] = 0
    hidden_next, _ = model.patch_level_decoder(torch.cat([context, patch])[None].cuda())
    assert (gen.hidden_next[0].float() - hidden_next[0, -1]).abs().max().item() < tol


def test_fused_graph_replay_equals_eager(trained):
    from notagen_trt.fastpath.executor import FastBackend

    requests = [PieceRequest(None, GenerationConfig(seed=s, max_patches=60)) for s in range(3)]
    backend = FastBackend(copy.deepcopy(trained), "cuda", "fp16")
    eager = Engine(backend.executor(3, graph=False)).generate(requests)
    graphed = Engine(backend.executor(3, graph=True)).generate(requests)
    assert [p.text for p in eager] == [p.text for p in graphed]
    assert all(p.patches > 5 and "[r:" in p.text for p in graphed)
