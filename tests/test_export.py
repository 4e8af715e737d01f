"""ONNX export: parity with PyTorch, IO contract, manifest checks, and the ONNX Runtime backend."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import BACH

from notagen_trt.config import PRESETS, ModelConfig
from notagen_trt.errors import NotaGenError
from notagen_trt.export import onnx_export
from notagen_trt.export.model import NotaGenModel
from notagen_trt.export.onnx_export import check_parity, export_onnx, graph_io
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.manifest import read_manifest, write_manifest
from notagen_trt.runtime.engine import generate
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.onnx_backend import OrtBackend
from notagen_trt.runtime.prompts import resolve_prompt

TINY = ModelConfig(hidden_size=128, patch_num_layers=2, char_num_layers=2, patch_length=64)
GRAPHS = ("patch_decoder", "char_decoder")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx")
    return out, export_onnx(NotaGenModel(TINY), out)


def test_parity_on_prefill_and_32_steps_is_recorded(exported):
    out, manifest = exported
    parity = manifest["parity"]
    assert parity["patch_steps"] == 32 and parity["char_steps"] >= 32
    assert set(parity["max_abs_diff"]) == {"patch_prefill", "patch_step", "char_prefill", "char_step"}
    assert all(0 <= d <= 1e-4 for d in parity["max_abs_diff"].values())
    assert read_manifest(out, expect_kind="onnx")["parity"] == parity


def test_parity_check_fails_loudly(exported):
    out, _ = exported
    with pytest.raises(NotaGenError, match="differs from PyTorch"):
        check_parity(NotaGenModel(TINY), out)  # other random weights than the exported ones


def test_failed_export_writes_nothing(tmp_path, monkeypatch):
    def fail(*_args, **_kwargs):
        raise NotaGenError("parity failed")

    monkeypatch.setattr(onnx_export, "check_parity", fail)
    with pytest.raises(NotaGenError):
        export_onnx(NotaGenModel(TINY), tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_io_names_follow_optimum_and_match_the_manifest(exported):
    out, manifest = exported
    for name, layers in (("patch_decoder", TINY.patch_num_layers), ("char_decoder", TINY.char_num_layers)):
        graph = manifest["graphs"][name]
        kv_in = [f"past_key_values.{i}.{p}" for i in range(layers) for p in ("key", "value")]
        kv_out = [f"present.{i}.{p}" for i in range(layers) for p in ("key", "value")]
        assert [s["name"] for s in graph["inputs"]][-2 * layers:] == kv_in
        assert [s["name"] for s in graph["outputs"]][-2 * layers:] == kv_out
        assert graph["num_layers"] == layers and graph["kv_layout"]["kind"] == "growing"
        model = onnx.load(str(out / graph["file"]))
        assert graph_io(model) == {"inputs": graph["inputs"], "outputs": graph["outputs"]}
    patch = manifest["graphs"]["patch_decoder"]
    assert patch["inputs"][0] == {"name": "patches", "dtype": "int64", "shape": ["batch", "new_patches", 16]}
    assert patch["inputs"][1]["shape"] == ["batch", TINY.num_heads, "past_patches", 64]
    assert patch["outputs"][0]["shape"] == ["batch", "new_patches", TINY.hidden_size]
    char = manifest["graphs"]["char_decoder"]
    assert [s["name"] for s in char["inputs"][:2]] == ["input_ids", "patch_hidden"]
    assert char["outputs"][0]["shape"] == ["batch", "new_chars", 128]
    assert manifest["model"] == TINY.to_dict() and manifest["precision"] == "fp32" and manifest["opset"] >= 17
    assert set(manifest["tools"]) == {"torch", "onnx", "onnxruntime", "notagen_trt"}


def test_patch_embedding_is_a_gather(exported):
    out, _ = exported
    graph = onnx.load(str(out / "patch_decoder.onnx")).graph
    wide = {i.name for i in graph.initializer if 16 * 128 in i.dims}  # the [2048, H] embedding table
    assert wide
    consumers = {n.op_type for n in graph.node if wide & set(n.input)}
    assert consumers == {"Gather"}
    assert not any(n.op_type == "OneHot" for n in graph.node)


def test_batched_and_mid_context_calls_match_pytorch(exported):
    """Batch 2 and a multi-patch extend on a non-empty past: the dynamic axes really are dynamic."""
    out, _ = exported
    torch.manual_seed(0)
    model = NotaGenModel(TINY).eval()  # the fixture's weights
    sess = ort.InferenceSession(str(out / "patch_decoder.onnx"), providers=["CPUExecutionProvider"])
    patches = torch.randint(0, 128, (2, 5, 16))
    with torch.no_grad():
        h1, past = model.patch_level_decoder(patches[:, :2])
        h2, _ = model.patch_level_decoder(patches[:, 2:], past)
    feeds = {"patches": patches[:, 2:].numpy()}
    feeds.update({f"past_key_values.{i}.{p}": kv[j].numpy() for i, kv in enumerate(past) for j, p in enumerate(("key", "value"))})
    got = sess.run(["last_hidden_state"], feeds)[0]
    assert np.abs(got - h2.numpy()).max() <= 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ort_backend_writes_the_reference_pieces(trained, trained_onnx, seed):
    model, onnx_dir = trained, trained_onnx
    config, prompt = GenerationConfig(seed=seed, max_patches=120), resolve_prompt(*BACH)
    backend = OrtBackend(onnx_dir, threads=1)
    assert backend.config == model.config and backend.name == "onnxruntime-cpu"
    ours = generate(backend.executor(), prompt, config)
    ref = generate(ReferenceBackend(model, "cached").executor(), prompt, config)
    assert ours.text == ref.text and ours.patches == ref.patches and ours.stop_reason == ref.stop_reason
    assert ours.rebuilds == ref.rebuilds and "[r:0/" in ours.text


def test_manifest_records_the_checkpoint(trained_onnx):
    onnx_dir = trained_onnx
    source = read_manifest(onnx_dir)["source"]
    assert source["checkpoint"].endswith("m.pth") and len(source["sha256"]) == 64


def test_runtime_generates_without_torch(trained, trained_onnx):
    """The deployed runtime is numpy + onnxruntime: torch must not even be importable."""
    model, onnx_dir = trained, trained_onnx
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder

        class NoTorch(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        import importlib, pkgutil
        import notagen_trt.runtime
        for module in pkgutil.iter_modules(notagen_trt.runtime.__path__):  # every runtime module imports
            importlib.import_module("notagen_trt.runtime." + module.name)
        from notagen_trt.runtime import GenerationConfig, PieceRequest, load_engine, resolve_prompt

        with load_engine({str(onnx_dir)!r}, "auto", threads=1) as engine:  # no torch: ONNX Runtime
            prompt = resolve_prompt(*{BACH!r})
            (piece,) = engine.generate([PieceRequest(prompt, GenerationConfig(seed=0, max_patches=40))])
        assert "torch" not in sys.modules
        print(piece.text, end="")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = ReferenceBackend(model, "cached").generate(resolve_prompt(*BACH), GenerationConfig(seed=0, max_patches=40))
    assert result.stdout == expected.text


def test_external_data(tmp_path):
    manifest = export_onnx(NotaGenModel(TINY), tmp_path, external_data=True, parity=False)
    for name in GRAPHS:
        data = manifest["graphs"][name]["external_data"]
        assert data == f"{name}.onnx.data" and (tmp_path / data).stat().st_size > (tmp_path / f"{name}.onnx").stat().st_size
    session = OrtBackend(tmp_path).new_session()
    assert session.extend(np.full((3, 16), 65)).shape == (TINY.hidden_size,)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["manifest.json"] + [f"{g}.onnx{s}" for g in GRAPHS for s in ("", ".data")])


def _tampered(src, dst, edit):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    data = json.loads((src / "manifest.json").read_text())
    edit(data)
    write_manifest(dst, data)
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["graphs"]["patch_decoder"].update(file="../patch_decoder.onnx"), "outside the model directory"),
    (lambda m: m["graphs"]["char_decoder"].update(file="/etc/passwd"), "outside the model directory"),
    (lambda m: m["graphs"]["char_decoder"].update(external_data="sub/../../x.data"), "outside the model directory"),
    (lambda m: m["graphs"]["patch_decoder"].update(file="gone.onnx"), "missing"),
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(kind="engine"), "'onnx' directory is needed"),
    (lambda m: m["model"].update(hidden_size=100), "invalid model config"),
    (lambda m: m["graphs"].pop("char_decoder"), "must describe graphs"),
])
def test_bad_manifests_are_refused(exported, tmp_path, edit, message):
    out, _ = exported
    bad = _tampered(out, tmp_path / "bad", edit)
    with pytest.raises(NotaGenError, match=message) as info:
        read_manifest(bad, expect_kind="onnx")
    assert "\n" not in str(info.value) and str(bad / "manifest.json") in str(info.value)


def test_missing_manifest_and_missing_graph_file(exported, tmp_path):
    with pytest.raises(NotaGenError, match="no manifest"):
        OrtBackend(tmp_path)
    with pytest.raises(NotaGenError, match="no such model directory"):  # as generate says it
        read_manifest(tmp_path / "nope")
    out, _ = exported
    bad = _tampered(out, tmp_path / "bad", lambda m: None)
    (bad / "char_decoder.onnx").unlink()
    with pytest.raises(NotaGenError, match="missing"):
        OrtBackend(bad)


def test_cuda_without_the_provider_is_refused(exported):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(NotaGenError, match="CUDAExecutionProvider"):
        OrtBackend(exported[0], device="cuda")


@pytest.mark.slow
def test_notagen_small_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    manifest = export_onnx(NotaGenModel(PRESETS["small"]), tmp_path)
    assert max(manifest["parity"]["max_abs_diff"].values()) <= 1e-4
    assert manifest["parity"]["patch_steps"] == 32 and manifest["graphs"]["patch_decoder"]["external_data"] is None
    assert (tmp_path / "patch_decoder.onnx").stat().st_size > 300e6  # ~88M fp32 parameters


def test_a_model_of_the_step_graphs_only_runs_with_a_note_on_the_faster_layout(tiny_dir):
    """Step graphs only (`export --layout growing`): ONNX Runtime runs them, and the backend's note
    (which `generate` prints) says how to get the engine-ready graphs it runs about twice as fast."""
    from notagen_trt.runtime.backends import select_backend

    backend, note = select_backend(tiny_dir / "onnx", "ort-cpu")
    assert read_manifest(tiny_dir / "onnx")["layout"] == "growing"
    assert "step graphs only" in note and "--layout engine" in note
