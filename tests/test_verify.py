"""`notagen-trt verify`: Polygraphy's comparator over real held-out inputs (ONNX Runtime vs
PyTorch in CI; TensorRT vs ONNX Runtime where a GPU runs TensorRT), with each precision's
default tolerance."""

import json
import subprocess
import sys

import numpy as np
import pytest

from notagen_trt.corpus import default_split
from notagen_trt.demo import demo_model_dir
from notagen_trt.engines.flavors import unusable_reason
from notagen_trt.engines.gates import VERIFY_TOLERANCES, verify_tolerance
from notagen_trt.engines.verify import Target, compare, real_feeds, resolve, verify
from notagen_trt.manifest import GRAPH_NAMES, read_manifest


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "notagen_trt.cli", "verify", *args], capture_output=True,
                          text=True, timeout=300)


def test_feeds_are_real_pieces_with_caches_from_the_reference():
    model = demo_model_dir()
    manifest = read_manifest(model)
    target = resolve(str(model), model)
    assert (target.label, target.precision) == ("onnxruntime:fp32", "fp32")
    feeds = real_feeds(manifest, target.infer, default_split("heldout"), pieces=2)
    patch_prefill, patch_step = feeds["patch_decoder"][:2]
    assert patch_prefill["patches"].shape[1] > 1 and patch_prefill["past_key_values.0.key"].shape[2] == 0
    assert patch_step["patches"].shape[1] == 1
    assert patch_step["past_key_values.0.key"].shape[2] == patch_prefill["patches"].shape[1]
    char_prefill, char_step = feeds["char_decoder"][:2]
    assert char_step["past_key_values.0.key"].shape[2] == char_prefill["input_ids"].shape[1]
    assert all(len(feeds[g]) == 4 for g in GRAPH_NAMES)
    # The step's past is the prefill's present, layer by layer (keys to keys, values to values).
    present = target.infer("char_decoder", char_prefill)
    assert np.array_equal(char_step["past_key_values.1.value"], present["present.1.value"])


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
    assert "(atol 0.0, rtol 0.0), 1 held-out pieces" in r.stdout
    r = _verify("--atol", "0", "--rtol", "0", "--pieces", "1", "--json")  # stdout: the JSON alone, failing too
    assert r.returncode == 1 and json.loads(r.stdout)["passed"] is False
    assert "FAILED" not in r.stdout + r.stderr  # Polygraphy's per-output lines: the report says it once


def test_default_tolerance_is_the_looser_precisions():
    assert verify_tolerance("fp32", "fp32") == VERIFY_TOLERANCES["fp32"] == (1e-4, 1e-3)
    assert verify_tolerance("int8-wo", "fp32") == verify_tolerance("fp16", "int8-wo") == VERIFY_TOLERANCES["int8-wo"]
    assert verify_tolerance(None, "int8") == VERIFY_TOLERANCES["int8"]
    atol = [VERIFY_TOLERANCES[p][0] for p in ("fp32", "fp16", "int8-wo", "int8")]
    assert atol == sorted(atol)  # less precision, more tolerance


def _broken_graph_infer(variant, scratch, graph: str, layer: str, factor: float):
    """ONNX Runtime on the variant's graphs with one layer's weight scales of ``graph`` multiplied:
    a broken int8-wo variant (run from bare files: a model directory would refuse the edited graph)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(variant / f"{graph}.onnx")
    hits = [t for t in model.graph.initializer if layer in t.name and t.name.endswith("weight_scale")]
    assert hits
    for t in hits:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(model, scratch / f"{graph}.onnx")
    sessions = {g: ort.InferenceSession(str((scratch if g == graph else variant) / f"{g}.onnx")) for g in GRAPH_NAMES}

    def infer(name, feeds):
        session = sessions[name]
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return infer


@pytest.mark.slow
def test_a_quantized_variant_passes_at_its_defaults_and_a_broken_one_fails(demo_variant, tmp_path):
    variant = demo_variant("int8-wo")
    report = verify(variant, pieces=2)
    assert report["subject"] == "onnxruntime:int8-wo" and report["reference"].startswith("pytorch:")
    assert (report["atol"], report["rtol"]) == VERIFY_TOLERANCES["int8-wo"]
    assert report["passed"], report
    logits = report["graphs"]["char_decoder"]["outputs"]["logits"]
    assert 1e-3 < logits["max_abs"] < report["atol"]  # really int8: far above fp32's tolerance, within its own

    reference = resolve("torch", variant)
    feeds = real_feeds(read_manifest(variant), reference.infer, default_split("heldout"), pieces=2)
    assert not compare(resolve(str(variant), variant), reference, feeds, *VERIFY_TOLERANCES["fp32"])["passed"]
    broken = Target("broken", "int8-wo", _broken_graph_infer(variant, tmp_path, "char_decoder", "h.1.attn.c_proj", 1.5))
    report = compare(broken, reference, feeds, *verify_tolerance(broken.precision, reference.precision))
    assert not report["passed"] and not report["graphs"]["char_decoder"]["outputs"]["logits"]["passed"]
    assert report["graphs"]["patch_decoder"]["outputs"]["last_hidden_state"]["passed"]  # only the char graph broke


_RTX_UNUSABLE = unusable_reason("rtx")


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(_RTX_UNUSABLE is not None, reason=f"TensorRT-RTX cannot run here: {_RTX_UNUSABLE}")
def test_tensorrt_matches_onnx_runtime(tmp_path):
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
