"""The typed view of a graph's IO (manifest.graph_io) that every backend, the engine builder,
verify and calibration share."""

import copy

import pytest

from notagen_trt.demo import demo_model_dir
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import TensorSpec, graph_io, read_manifest


def test_graph_io_splits_head_past_and_present():
    manifest = read_manifest(demo_model_dir())
    layers = manifest["model"]["char_num_layers"]
    io = graph_io(manifest, "char_decoder")
    assert io.num_layers == layers and io.file == "char_decoder.onnx" and io.profiles == ()
    assert io.head_names == ("input_ids", "patch_hidden") and io.output == "logits"
    assert io.past_names == tuple(f"past_key_values.{i}.{p}" for i in range(layers) for p in ("key", "value"))
    assert io.present_names == tuple(f"present.{i}.{p}" for i in range(layers) for p in ("key", "value"))
    assert io.input_names == io.head_names + io.past_names
    assert io.inputs[0] == TensorSpec("input_ids", "int64", ("batch", "new_chars"))
    assert [s.to_dict() for s in io.inputs] == manifest["graphs"]["char_decoder"]["inputs"]
    patch = graph_io(manifest, "patch_decoder")
    assert patch.head_names == ("patches",) and patch.max_positions == manifest["model"]["patch_length"]
    assert patch.path(demo_model_dir()) == demo_model_dir() / "patch_decoder.onnx"


def test_a_malformed_graph_entry_is_one_line_naming_the_manifest():
    model = demo_model_dir()
    manifest = copy.deepcopy(read_manifest(model))
    manifest["graphs"]["patch_decoder"]["outputs"] = manifest["graphs"]["patch_decoder"]["outputs"][:1]
    del manifest["graphs"]["char_decoder"]["num_layers"]
    with pytest.raises(NotaGenError, match="graphs.patch_decoder lists .* re-export") as info:
        graph_io(manifest, "patch_decoder", model)
    assert str(info.value).startswith(str(model / "manifest.json")) and "\n" not in str(info.value)
    with pytest.raises(NotaGenError, match="graphs.char_decoder is malformed .*num_layers"):
        graph_io(manifest, "char_decoder", model)


def test_a_changed_or_truncated_graph_file_is_refused_and_no_name_leaves_the_directory(tmp_path):
    import json
    import shutil

    from notagen_trt.manifest import write_manifest

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    read_manifest(model)  # intact: every recorded file hashed (side by side) and equal
    graph = model / "char_decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1  # same size, one bit changed
    graph.write_bytes(bytes(data))
    with pytest.raises(NotaGenError, match="char_decoder.onnx: the file changed since it was written"):
        read_manifest(model)
    graph.write_bytes(bytes(data[:-1]))
    with pytest.raises(NotaGenError, match="char_decoder.onnx: .* bytes, but manifest.json records"):
        read_manifest(model)
    shutil.copyfile(demo_model_dir() / "char_decoder.onnx", graph)
    manifest = json.loads((model / "manifest.json").read_text())
    checksums = manifest["graphs"]["char_decoder"]["checksums"]
    checksums["/dev/zero"] = checksums["char_decoder.onnx"]  # refused by name, never read (it has no end)
    write_manifest(model, manifest)
    with pytest.raises(NotaGenError, match="'/dev/zero' points outside the model directory"):
        read_manifest(model)
