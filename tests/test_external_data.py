"""Models stored as external data (NotaGen-X: 2 GB in fp32, weights in ``<graph>.onnx.data``) go
through every stage like the demo: quantize to fp16 / int8-wo / int8 (variants stored the same
way), eval, verify against the fp32 directory, and a TensorRT-RTX build. A tiny random-weight
model stands in for the big one: the code paths are the ones a > 2 GB model takes."""

import json
import math

import onnx
import pytest

from notagen_trt.cli import main
from notagen_trt.config import ModelConfig
from notagen_trt.corpus import default_split, read_pieces
from notagen_trt.engines.quantize import PRECISIONS, quantize
from notagen_trt.manifest import GRAPH_NAMES, read_manifest

CONFIG = ModelConfig(hidden_size=64, patch_num_layers=2, char_num_layers=1, patch_length=16)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    import torch

    from notagen_trt.export.model import NotaGenModel
    from notagen_trt.export.onnx_export import export_onnx

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fp32-external")
    export_onnx(NotaGenModel(CONFIG), out, external_data=True, parity=False)
    return out


@pytest.fixture(scope="module")
def variants(fp32, tmp_path_factory):
    before = sorted(p.name for p in fp32.iterdir())
    out = {}
    for precision in PRECISIONS:
        out[precision] = tmp_path_factory.mktemp(precision)
        quantize(fp32, precision, out[precision], calib_pieces=2)
    assert sorted(p.name for p in fp32.iterdir()) == before  # no tool wrote beside the source
    return out


def _external_tensors(path):
    graph = onnx.load(str(path), load_external_data=False).graph
    return {t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_variant_is_stored_as_external_data_and_generates(precision, fp32, variants, tmp_path, capsys):
    directory = variants[precision]
    manifest = read_manifest(directory, expect_kind="onnx")  # also checks every file's sha256
    assert manifest["precision"] == precision
    for g in GRAPH_NAMES:
        entry = manifest["graphs"][g]
        assert entry["external_data"] == f"{g}.onnx.data" and (directory / entry["external_data"]).is_file()
        assert set(entry["checksums"]) == {f"{g}.onnx", f"{g}.onnx.data"}
        assert _external_tensors(directory / entry["file"])  # the weights live in the side file
        onnx.checker.check_model(str(directory / entry["file"]))
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["manifest.json", *(f"{g}.onnx{ext}" for g in GRAPH_NAMES for ext in ("", ".data"))])

    rc = main(["generate", "--model", str(directory), "--backend", "ort-cpu", "--max-patches", "4",
               "--formats", "abc", "--json", "--out", str(tmp_path / "pieces")])
    assert rc == 0, capsys.readouterr().err
    assert list((tmp_path / "pieces").glob("*.abc"))


def test_eval_scores_a_variant_against_its_external_data_source(fp32, variants):
    from notagen_trt.runtime.evaluate import evaluate

    pieces = [t for _, t in read_pieces(default_split("heldout"))][:2]
    result = evaluate(variants["int8"], pieces, num_generated=0, threads=1)
    assert result["reference"] == str(fp32.resolve()) and result["chars"] > 0
    assert math.isfinite(result["bits_per_char_change"]) and 0 <= result["top1_agreement"] <= 1


def test_verify_compares_a_variant_with_the_fp32_directory(fp32, variants):
    from notagen_trt.engines.verify import verify

    report = verify(variants["fp16"], against=str(fp32), pieces=2)
    assert (report["subject"], report["reference"]) == ("onnxruntime:fp16", "onnxruntime:fp32")
    assert report["passed"], report


def test_rtx_builds_plans_from_an_external_data_variant(variants, tmp_path, capsys):
    rc = main(["build", "--flavor", "rtx", "--model", str(variants["fp16"]), "--out", str(tmp_path / "plans"),
               "--json"])
    assert rc == 0, capsys.readouterr().err
    manifest = read_manifest(tmp_path / "plans", expect_kind="engine")
    assert manifest["precision"] == "fp16"
    for g in GRAPH_NAMES:
        assert (tmp_path / "plans" / manifest["graphs"][g]["file"]).stat().st_size > 0
    assert json.loads(capsys.readouterr().out)


def test_engine_ready_graphs_and_their_cpu_forms_are_stored_as_external_data(tmp_path, capsys):
    """The engine-ready layout of a model stored as external data: every graph and CPU form keeps
    its weights in its own side file (named in the manifest, checksummed), int8-wo writes its
    MatMulNBits CPU forms the same way, and both directories generate on the CPU."""
    import torch

    from notagen_trt.export.model import NotaGenModel
    from notagen_trt.export.onnx_export import export_onnx

    torch.manual_seed(0)
    fp32 = tmp_path / "fp32"
    export_onnx(NotaGenModel(CONFIG), fp32, external_data=True, parity=True, layout="engine")
    int8 = tmp_path / "int8-wo"
    quantize(fp32, "int8-wo", int8)
    for directory, forms in ((fp32, ["patch_engine"]), (int8, ["patch_engine", "context_loader"])):
        manifest = read_manifest(directory, expect_kind="onnx")  # also checks every file's sha256
        for g in forms:
            entry = manifest["graphs"][g]
            files = [f"{g}.onnx", f"{g}.onnx.data", f"{g}.cpu.onnx", f"{g}.cpu.onnx.data"]
            assert [entry[k] for k in ("file", "external_data", "cpu_file", "cpu_external_data")] == files
            assert set(entry["checksums"]) == set(files) and _external_tensors(directory / entry["cpu_file"])
        rc = main(["generate", "--model", str(directory), "--backend", "ort-cpu", "--max-patches", "4",
                   "--formats", "abc", "--json", "--out", str(tmp_path / f"pieces-{directory.name}")])
        assert rc == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["pieces"][0]["patches"] == 4
