"""The reference generator: published (no cache) and cached modes write the same pieces."""

import pytest
import torch
from conftest import BACH

from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime.generate import GenerationConfig, generate
from notagen_trt.runtime import codec
from notagen_trt.runtime.prompts import resolve_prompt



@pytest.mark.parametrize("seed", [0, 1, 2])
def test_published_and_cached_modes_write_identical_pieces(trained, seed):
    config = GenerationConfig(seed=seed, max_patches=120)
    prompt = resolve_prompt(*BACH)
    a = ReferenceBackend(trained, "published").generate(prompt, config)
    b = ReferenceBackend(trained, "cached").generate(prompt, config)
    assert a.text == b.text and a.patches == b.patches and a.stop_reason == b.stop_reason
    assert a.text.startswith("".join(prompt.lines()))
    assert "[r:0/" in a.text  # the first body patch was forced


@pytest.mark.parametrize("seed", [3, 4])
def test_context_halving_keeps_generating(trained, seed):
    """A loop PATCH_LENGTH of 22 (below the model's 32) forces rebuilds within one short piece."""
    config, prompt = GenerationConfig(seed=seed, max_patches=150), resolve_prompt(*BACH)
    cached = generate(ReferenceBackend(trained, "cached").new_session(), 22, prompt, config)
    published = generate(ReferenceBackend(trained, "published").new_session(), 22, prompt, config)
    assert cached.rebuilds >= 1
    assert cached.patches > 22 - 15  # more patches than the context holds beside the header
    assert published.text == cached.text and published.rebuilds == cached.rebuilds


def test_forced_length_prefix(trained):
    piece = ReferenceBackend(trained, "cached").generate(resolve_prompt(*BACH), GenerationConfig(seed=0, bars=7, max_patches=40))
    body = [line for line in piece.text.splitlines() if line.startswith("[r:")]
    assert body and body[0].startswith("[r:0/7]")


def test_limits_end_generation(trained):
    backend = ReferenceBackend(trained, "cached")
    piece = backend.generate(None, GenerationConfig(seed=0, max_patches=5))
    assert (piece.patches, piece.stop_reason) == (5, "max_patches")
    piece = backend.generate(None, GenerationConfig(seed=0, max_chars=40))
    assert piece.stop_reason == "max_chars" and 40 < len(piece.text) <= 56


def test_seeds_differ_and_repeat(trained):
    backend = ReferenceBackend(trained, "cached")
    config = GenerationConfig(seed=5, max_patches=30)
    assert backend.generate(None, config).text == backend.generate(None, config).text
    texts = {backend.generate(None, GenerationConfig(seed=s, max_patches=30)).text for s in range(6)}
    assert len(texts) > 1


def test_invalid_generation_settings_are_rejected():
    with pytest.raises(ValueError):
        GenerationConfig(seed=-1)
    with pytest.raises(ValueError):
        GenerationConfig(max_patches=0)
    with pytest.raises(ValueError):
        ReferenceBackend(torch.nn.Module(), "fast")


def test_bar_streaming_yields_the_whole_piece_in_bars(trained):
    from notagen_trt.runtime.generate import PieceGenerator

    prompt = resolve_prompt(*BACH)
    config = GenerationConfig(seed=1, max_patches=60)
    gen = PieceGenerator(ReferenceBackend(trained, "cached").new_session(), 32, prompt, config)
    bars = list(gen.bars())
    assert "".join(bars) == gen.piece.text[len("".join(prompt.lines())) :]
    assert len(bars) > 3
    # each yielded piece is one bar segment of the codec (a header line or one voice's bar)
    for bar in bars[:-1]:
        assert "\n" not in bar[:-1]
        assert codec.split_bars(bar) == [bar]


def test_generate_many_is_independent_of_workers(trained):
    from notagen_trt.runtime.generate import generate_many

    backend = ReferenceBackend(trained, "cached")
    configs = [GenerationConfig(seed=s, max_patches=40) for s in range(4)]
    one = generate_many(backend, 32, resolve_prompt(*BACH), configs, workers=1)
    many = generate_many(backend, 32, resolve_prompt(*BACH), configs, workers=3)
    assert [p.text for p in one] == [p.text for p in many]
    assert [p.text for p in one] == [backend.generate(resolve_prompt(*BACH), c).text for c in configs]
