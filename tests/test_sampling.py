import numpy as np
import pytest

from notagen_trt.runtime.sampling import SamplingParams, draw, sample, softmax, transform_probs, weights

P = np.array([0.5, 0.2, 0.15, 0.1, 0.05])


def test_top_k_then_top_p_then_temperature_hand_checked():
    out = transform_probs(P, SamplingParams(top_k=3, top_p=0.7, temperature=1.0))
    # top-3 renormalised: .588 .235 .176; the third starts after .824 > 0.7 of mass -> dropped
    np.testing.assert_allclose(out, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    out = transform_probs(P, SamplingParams(top_k=3, top_p=0.7, temperature=2.0))
    kept = np.sqrt([0.5, 0.2])
    np.testing.assert_allclose(out, [*(kept / kept.sum()), 0, 0, 0])


def test_published_defaults():
    assert SamplingParams() == SamplingParams(top_k=9, top_p=0.9, temperature=1.2)
    probs = softmax(np.random.default_rng(0).normal(size=(4, 128)) * 3)
    out = transform_probs(probs)
    assert (np.count_nonzero(out, axis=-1) <= 9).all()
    np.testing.assert_allclose(out.sum(-1), 1.0)


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    out = transform_probs(np.array([0.6, 0.3, 0.1]), SamplingParams(top_k=0, top_p=0.65, temperature=1.0))
    np.testing.assert_allclose(out, [2 / 3, 1 / 3, 0])


def test_draw_is_inverse_cdf_and_seeded():
    probs = np.array([0.25, 0.0, 0.75])
    assert draw(probs, 0.0) == 0 and draw(probs, 0.2499) == 0 and draw(probs, 0.25) == 2 and draw(probs, 0.9999) == 2
    logits = np.random.default_rng(0).normal(size=128)
    a = [int(sample(logits, u)) for u in np.random.default_rng(7).random(50)]
    b = [int(sample(logits, u)) for u in np.random.default_rng(7).random(50)]
    assert a == b and len(set(a)) > 1
    assert set(a) <= set(np.flatnonzero(transform_probs(softmax(logits))))


def test_draw_frequencies_follow_the_distribution():
    probs = transform_probs(np.array([0.5, 0.3, 0.2]), SamplingParams(top_k=0, top_p=1.0, temperature=1.0))
    counts = np.bincount(draw(np.tile(probs, (20000, 1)), np.random.default_rng(1).random(20000)), minlength=3)
    np.testing.assert_allclose(counts / 20000, probs, atol=0.02)


@pytest.mark.parametrize("kwargs", [{"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": 0.0}])
def test_invalid_params_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=0, top_p=0.5, temperature=0.7),
                                    SamplingParams(top_k=1), SamplingParams(top_k=128, top_p=1.0)])
def test_one_row_fast_path_equals_the_array_rule(params):
    """sample() on one row takes a shortcut (the batch-1 hot path); it must pick exactly the ids
    of weights -> draw, ties and the top-p boundary included."""
    rng = np.random.default_rng(7)
    for i in range(3000):
        logits = (rng.normal(size=128) * rng.choice([0.1, 2.0, 8.0])).astype(np.float32)
        if i % 3 == 0:
            logits[rng.integers(0, 128, 6)] = logits.max()  # ties at the top
        if i % 5 == 0:
            logits = np.round(logits, 1)  # many ties everywhere
        u = rng.random()
        want = draw(weights(logits, params), u)
        got = sample(logits, u, params)
        assert got == want and np.ndim(got) == 0
