"""Precision variants of the demo model: each must meet its accuracy gate on held-out ABC.

The gates (engines/gates.py GATES), measured by the same code as `notagen-trt eval`:
fp16 bits/char within 0.5% of fp32 and top-1 agreement >= 99.5%; int8 weight-only within 1%
and >= 99%; int8 (W8A8, calibrated) within 3% and >= 97%. To keep the suite fast on 2 cores the
gates run on a deterministic subset: 32 of the 254 heldout pieces, every 8th of the sorted split
(about 22 k scored characters), with 16 calibration pieces and 4 generated pieces per variant.
"""

import hashlib
import json

import numpy as np
import onnx
import pytest

from notagen_trt.cli import main
from notagen_trt.corpus import default_split, read_pieces
from notagen_trt.demo import demo_checkpoint, demo_model_dir
from notagen_trt.engines.quantize import PRECISIONS, quantize
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import read_manifest
from notagen_trt.engines.gates import GATES
from notagen_trt.runtime.evaluate import FP16_FORM_PIECES, bars_match_meter, evaluate, teacher_forced
from notagen_trt.runtime.onnx_backend import OrtBackend

SUBSET = 32
CALIB_PIECES = 16
GENERATED = 4


@pytest.fixture(scope="module")
def heldout() -> list[str]:
    pieces = [t for _, t in read_pieces(default_split("heldout"))]
    return pieces[:: len(pieces) // SUBSET][:SUBSET]


@pytest.fixture(scope="module")
def variants(demo_variant) -> dict:
    return {precision: demo_variant(precision) for precision in PRECISIONS}


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_variant_meets_its_gate(precision, variants, heldout):
    result = evaluate(variants[precision], heldout, num_generated=GENERATED, threads=1)
    max_change, min_top1 = GATES[precision]
    print(json.dumps({k: v for k, v in result.items() if k != "generated"}))
    assert result["reference"] == str(demo_model_dir().resolve())
    assert result["bits_per_char_change"] <= max_change, result
    assert result["top1_agreement"] >= min_top1, result
    # fp16's and int8-wo's engine-ready graphs run on a CPU in a form of their own (fused attention;
    # int8-wo: MatMulNBits too): held to the same limit. int8 (W8A8) has no engine-ready graphs.
    assert ("cpu_form_top1_agreement" in result) == (precision in ("fp16", "int8-wo"))
    assert result.get("cpu_form_pieces") == {"fp16": FP16_FORM_PIECES, "int8-wo": SUBSET}.get(precision)
    assert result.get("cpu_form_top1_agreement", 1.0) >= min_top1, result
    assert result["gate"]["passed"]
    assert 0 <= result["valid_fraction"] <= 1 and len(result["generated"]) == GENERATED


def test_fp32_ort_bits_per_char_matches_pytorch(heldout):
    """The ONNX Runtime scorer and export/evaluate.py score the same positions the same way."""
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.evaluate import bits_per_char

    pieces = heldout[:6]
    torch_bits = bits_per_char(load_model(demo_checkpoint()), pieces)
    ort = teacher_forced(demo_model_dir(), pieces)
    assert ort.top1_agreement is None and ort.max_abs_logit_diff is None  # fp32 is its own reference
    assert abs(ort.bits_per_char - torch_bits) < 1e-4


@pytest.mark.slow
def test_variant_manifest_records_source_recipe_and_keeps_io(variants):
    source = demo_model_dir()
    digest = hashlib.sha256((source / "manifest.json").read_bytes()).hexdigest()
    fp32 = read_manifest(source)
    for precision, directory in variants.items():
        manifest = read_manifest(directory, expect_kind="onnx")
        assert manifest["precision"] == precision
        assert manifest["source"]["model_dir"] == str(source.resolve())
        assert manifest["source"]["manifest_sha256"] == digest
        recipe = manifest["quantization"]
        assert recipe["library"].startswith("onnxruntime") and "kept_in_higher_precision" in recipe
        for g in ("patch_decoder", "char_decoder"):
            assert manifest["graphs"][g]["inputs"] == fp32["graphs"][g]["inputs"]
            assert manifest["graphs"][g]["outputs"] == fp32["graphs"][g]["outputs"]
            ops = {n.op_type for n in onnx.load(str(directory / f"{g}.onnx")).graph.node}
            if precision == "fp16":
                assert "Cast" in ops and recipe["settings"]["op_block_list"] == ["LayerNormalization", "Softmax"]
            else:
                assert "DequantizeLinear" in ops
                assert ("QuantizeLinear" in ops) == (precision == "int8")
        if precision == "int8":
            calib = recipe["calibration"]
            assert calib["method"] == "minmax" and calib["pieces"] == CALIB_PIECES
            # Realistic KV caches of many lengths at both levels, not only empty-past prefills.
            assert calib["past_lengths"]["patch_decoder"]["distinct"] > 10
            assert calib["past_lengths"]["char_decoder"]["distinct"] > 5


@pytest.mark.slow
def test_variant_generates_like_fp32_through_the_backend(variants):
    """Variants load in the unchanged ORT backend (fp32 IO) and step like the fp32 model."""
    fp32 = OrtBackend(demo_model_dir(), "cpu", 1).new_session()
    patches = np.array([[1] * 15 + [2], [ord(c) for c in "L:1/8\n"] + [2] + [0] * 9])
    h32 = fp32.extend(patches)
    for directory in variants.values():
        session = OrtBackend(directory, "cpu", 1).new_session()
        h = session.extend(patches)
        assert h.dtype == np.float32 and np.abs(h - h32).max() < 0.5
        logits = session.char_start(h, [1])
        assert logits.shape == (128,) and np.isfinite(logits).all()


def test_quantize_refuses_a_variant_as_source(variants, tmp_path):
    with pytest.raises(NotaGenError, match="fp32"):
        quantize(variants["fp16"], "int8", tmp_path / "x")


def test_eval_refuses_a_variant_whose_source_changed(variants, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(variants["int8-wo"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["manifest_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NotaGenError, match="changed since it was quantized"):
        evaluate(copy, ["L:1/8\nM:4/4\nK:C\n[V:1]CDEF|\n"], num_generated=0)


def test_eval_cli_json_reports_the_gate_fields(variants, capsys):
    rc = main(["eval", "--model", str(variants["int8-wo"]), "--pieces", "4", "--num-generated", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    for key in ("bits_per_char", "top1_agreement", "max_abs_logit_diff", "valid_fraction"):
        assert key in out
    assert out["gate"]["passed"]


def test_bar_check_follows_the_meter():
    head = "X:1\nL:1/8\nM:4/4\nK:C\nV:1 treble\n"
    assert bars_match_meter(head + "[V:1]C2|\n[V:1]CDEF GABc|\n[V:1]c8|\n[V:1]C6|]\n") == (True, "")
    ok, why = bars_match_meter(head + "[V:1]C2|\n[V:1]CDEF GAB|\n[V:1]c8|\n[V:1]C6|]\n")
    assert not ok and "lasts 7" in why
    assert bars_match_meter(head + "[V:1]C2|\n[V:1][M:3/4]CDEF GA|\n[V:1]c6|\n[V:1]C6|]\n")[0]


def test_gate_is_pass_or_fail_at_the_precisions_limits():
    from notagen_trt.engines.gates import gate

    assert gate({"precision": "fp32"}) is None
    max_change, min_top1 = GATES["int8"]
    at_limit = {"precision": "int8", "bits_per_char_change": max_change, "top1_agreement": min_top1}
    assert gate(at_limit) == {"max_bits_per_char_change": 0.03, "min_top1_agreement": 0.97, "passed": True}
    assert not gate({**at_limit, "bits_per_char_change": max_change + 1e-4})["passed"]
    assert not gate({**at_limit, "top1_agreement": min_top1 - 1e-4})["passed"]
    assert gate({**at_limit, "cpu_form_top1_agreement": min_top1})["passed"]
    assert not gate({**at_limit, "cpu_form_top1_agreement": min_top1 - 1e-4})["passed"]
