"""The shipped demo model: loads, is good enough, and every path generates the same pieces."""

import json
from pathlib import Path

import pytest
from notagen_trt.export.evaluate import bits_per_char
from notagen_trt.export.onnx_export import export_onnx
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.postprocess import postprocess

from notagen_trt.cli import main
from notagen_trt.corpus import default_split, read_pieces
from notagen_trt.demo import DEMO_CHECKPOINT


@pytest.fixture(scope="module")
def demo_onnx(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-onnx")
    export_onnx(demo, out, checkpoint_path=DEMO_CHECKPOINT)
    return out


@pytest.fixture(scope="module")
def heldout_sample():
    return [t for _, t in read_pieces(default_split("heldout"))][::8]  # every 8th piece: seconds, not minutes


@pytest.fixture(scope="module")
def demo_bits(demo, heldout_sample):
    return bits_per_char(demo, heldout_sample)


def test_demo_checkpoint_is_small_and_loads(demo):
    assert DEMO_CHECKPOINT.stat().st_size <= 16 * 2**20
    assert demo.config.patch_length >= 256


def test_demo_model_bits_per_char_on_heldout_sample(demo_bits):
    assert demo_bits <= 1.6


def test_onnx_export_of_demo_model_meets_parity(demo_onnx):
    manifest = json.loads((demo_onnx / "manifest.json").read_text())
    assert all(d <= 1e-4 for d in manifest["parity"]["max_abs_diff"].values())
    assert manifest["parity"]["patch_steps"] >= 32 and manifest["parity"]["char_steps"] >= 32


@pytest.fixture(scope="module")
def reference_pieces(demo):
    """Seeds 0..7, whole pieces, from the cached PyTorch reference."""
    return Engine(ReferenceBackend(demo, "cached").executor()).generate(
        PieceRequest(None, GenerationConfig(seed=s)) for s in range(8))


def test_generate_on_ort_cpu_equals_cached_reference(reference_pieces, demo_onnx, tmp_path, capsys):
    rc = main(["generate", "--model", str(demo_onnx), "--backend", "ort-cpu", "--seed", "0", "--num-pieces", "8",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "onnxruntime-cpu"
    for seed, piece in enumerate(reference_pieces):
        assert piece.complete
        abc = Path(tmp_path / f"piece_seed{seed}.abc").read_text()
        assert abc.startswith(f"% notagen-trt: prompt unconditional; seed {seed};")
        assert abc.split("\n", 1)[1] == postprocess(piece.text)
    assert {r["seed"] for r in summary["pieces"]} == set(range(8))
    assert all("abc" in r["files"] for r in summary["pieces"])


def test_fast_path_eager_equals_cached_reference(demo, reference_pieces):
    """The fast CUDA path's code on the CPU (eager PyTorch ops, fp32), 4 rows in flight."""
    import copy

    from notagen_trt.fastpath.executor import FastBackend

    fast = Engine(FastBackend(copy.deepcopy(demo), "cpu", "fp32").executor(4)).generate(
        PieceRequest(None, GenerationConfig(seed=s)) for s in range(8))
    assert [p.text for p in fast] == [p.text for p in reference_pieces]


def test_unigram_baseline_is_far_above_the_model(demo, heldout_sample, demo_bits):
    from notagen_trt.runtime.evaluate import unigram_bits_per_char

    train = [t for _, t in read_pieces(default_split("train"))][::20]
    unigram = unigram_bits_per_char(train, heldout_sample, demo.config.patch_length)
    assert 4.0 < unigram < 7.0  # ~5.2 bits: ABC characters are far from uniform (7 bits)
    assert unigram > demo_bits + 3.0
