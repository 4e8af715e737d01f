"""The fast path (fixed-capacity caches, in-graph sampling, batched rows) writes exactly the
pieces of the reference loop. On the CPU it runs eagerly; CUDA-graph replay is the same code."""

import copy

import numpy as np
import pytest
import torch
from conftest import BACH

from notagen_trt.export.fast import FastGenerator, sample_torch
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime.generate import GenerationConfig, generate
from notagen_trt.runtime.prompts import resolve_prompt
from notagen_trt.runtime.sampling import SamplingParams, sample



SAMPLER_PARAMS = (SamplingParams(), SamplingParams(top_k=0, top_p=0.5, temperature=0.7))


def sampler_case(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random logits with tied rows, and one uniform per row."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 128)).astype(np.float32) * 4
    logits[: rows // 10, :5] = 3.0  # ties
    return logits, rng.random(rows)


def test_device_sampler_matches_numpy_sampler():
    logits, u = sampler_case(200, 0)
    for params in SAMPLER_PARAMS:
        want = sample(logits, u, params)
        got = sample_torch(torch.from_numpy(logits), torch.from_numpy(u), params).numpy()
        assert np.array_equal(want, got)


@pytest.mark.parametrize("prompt", [None, BACH])
def test_batched_fast_path_equals_reference(trained, prompt):
    prompt = resolve_prompt(*prompt) if prompt else None
    configs = [GenerationConfig(seed=s, max_patches=40 + 20 * s) for s in range(4)]  # rows end apart
    # A loop PATCH_LENGTH of 22 (below the model's 32) makes the pieces rebuild their context.
    fast = FastGenerator(copy.deepcopy(trained), batch=4, device="cpu", dtype=torch.float32,
                         patch_length=22).generate(prompt, configs)
    reference = ReferenceBackend(trained, "cached")
    for piece, config in zip(fast, configs):
        want = generate(reference.new_session(), 22, prompt, config)
        assert (piece.text, piece.patches, piece.stop_reason, piece.rebuilds) == (
            want.text, want.patches, want.stop_reason, want.rebuilds)
    assert any(p.rebuilds for p in fast)  # PATCH_LENGTH 32: the halving path ran in lockstep
    assert len({p.patches for p in fast}) > 1  # rows stopped at different times


def test_forced_length_on_the_fast_path(trained):
    config = GenerationConfig(seed=0, bars=7, max_patches=40)
    piece = FastGenerator(copy.deepcopy(trained), batch=1, device="cpu", dtype=torch.float32).generate(
        resolve_prompt(*BACH), [config])[0]
    assert piece.text == ReferenceBackend(trained, "cached").generate(resolve_prompt(*BACH), config).text
    assert "[r:0/7]" in piece.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for graph capture")
def test_cuda_graph_replay_equals_eager(trained):
    configs = [GenerationConfig(seed=s, max_patches=60) for s in range(3)]
    eager = FastGenerator(copy.deepcopy(trained), 3, "cuda", torch.float32, graph=False).generate(None, configs)
    graphed = FastGenerator(copy.deepcopy(trained), 3, "cuda", torch.float32, graph=True).generate(None, configs)
    assert [p.text for p in eager] == [p.text for p in graphed]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the Triton sampler")
def test_triton_sampler_matches_numpy_sampler():
    from notagen_trt.export.sampler_kernel import sample_into

    logits, u = sampler_case(256, 1)
    for params in SAMPLER_PARAMS:
        tokens = torch.zeros(256, 4, dtype=torch.long, device="cuda")
        forced = torch.full((256, 4), 42, dtype=torch.long, device="cuda")
        mask = torch.zeros(256, 4, dtype=torch.bool, device="cuda")
        mask[::9, 2] = True
        sample_into(torch.from_numpy(logits).cuda(), torch.from_numpy(u).cuda(), forced[:, 2], mask[:, 2],
                    tokens[:, 2], params)
        want = np.where(mask[:, 2].cpu().numpy(), 42, sample(logits, u, params))
        assert np.array_equal(tokens[:, 2].cpu().numpy(), want)
