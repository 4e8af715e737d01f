"""`notagen-trt verify`: Polygraphy's comparator over real held-out inputs (ONNX Runtime vs
PyTorch in CI; TensorRT vs ONNX Runtime where a GPU runs TensorRT)."""

import json
import subprocess
import sys

import pytest

from notagen_trt.commands.verify import real_feeds, resolve
from notagen_trt.corpus import default_split
from notagen_trt.demo import demo_model_dir
from notagen_trt.manifest import GRAPH_NAMES, read_manifest


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "notagen_trt.cli", "verify", *args], capture_output=True,
                          text=True, timeout=300)


def test_feeds_are_real_pieces_with_caches_from_the_reference():
    model = demo_model_dir()
    manifest = read_manifest(model)
    _, infer = resolve(str(model), manifest, None)
    feeds = real_feeds(manifest, infer, default_split("heldout"), pieces=2)
    patch_prefill, patch_step = feeds["patch_decoder"][:2]
    assert patch_prefill["patches"].shape[1] > 1 and patch_prefill["past_key_values.0.key"].shape[2] == 0
    assert patch_step["patches"].shape[1] == 1
    assert patch_step["past_key_values.0.key"].shape[2] == patch_prefill["patches"].shape[1]
    char_prefill, char_step = feeds["char_decoder"][:2]
    assert char_step["past_key_values.0.key"].shape[2] == char_prefill["input_ids"].shape[1]
    assert all(len(feeds[g]) == 4 for g in GRAPH_NAMES)


def test_onnx_runtime_matches_pytorch_on_heldout_pieces(capsys):
    r = _verify("--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["subject"] == "onnxruntime:fp32" and report["reference"].startswith("pytorch:")
    assert report["passed"]
    logits = report["graphs"]["char_decoder"]["outputs"]["logits"]
    hidden = report["graphs"]["patch_decoder"]["outputs"]["last_hidden_state"]
    assert logits["max_abs"] <= 1e-4 and hidden["max_abs"] <= 1e-4
    assert len(report["graphs"]["patch_decoder"]["outputs"]) == 1 + 2 * read_manifest(demo_model_dir())["model"][
        "patch_num_layers"]
    with capsys.disabled():
        print(f"\n[verify] ORT vs PyTorch, max |diff|: logits {logits['max_abs']:.2e}, "
              f"patch hidden {hidden['max_abs']:.2e}")


def test_differences_beyond_tolerance_fail():
    r = _verify("--atol", "0", "--rtol", "0", "--pieces", "1")
    assert r.returncode == 1 and "differ beyond the tolerance" in r.stderr and "FAIL" in r.stdout


def test_missing_reference_is_one_line():
    r = _verify("--against", "/nonexistent/model")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "/nonexistent/model" in r.stderr


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_matches_onnx_runtime(tmp_path):
    from test_engines import _runnable_gpu

    why = _runnable_gpu("rtx")
    if why:
        pytest.skip(why)
    from notagen_trt.engines.build import build_engines

    build_engines(demo_model_dir(), tmp_path / "engine", flavor="rtx")
    r = _verify("--model", str(tmp_path / "engine"), "--against", str(demo_model_dir()), "--atol", "1e-3")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_model_without_a_source_checkpoint_is_not_compared_with_the_demo(tmp_path):
    """A random-weight export records no checkpoint: verify must say so, not pick the demo model."""
    import torch

    from notagen_trt.config import ModelConfig
    from notagen_trt.export.model import NotaGenModel
    from notagen_trt.export.onnx_export import export_onnx

    torch.manual_seed(0)
    export_onnx(NotaGenModel(ModelConfig(64, 2, 1, 32)), tmp_path / "m", parity=False)
    r = _verify("--model", str(tmp_path / "m"), "--pieces", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "records no source checkpoint" in r.stderr
