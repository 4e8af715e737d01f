"""Precision variants of an fp32 model directory, written as ONNX (TensorRT 11 is strongly typed:
an engine's precision is the ONNX's). ONNX Runtime runs the same files, so every variant's
accuracy is checked on the CPU before an engine is built from it.

- ``fp16``: fp16 weights and activations (ONNX Runtime's ``float16`` converter) with fp32 islands,
  written as Cast nodes, for LayerNormalization and Softmax and for every node whose fp32
  activations, measured on the calibration set, come near the fp16 range. An engine-ready graph
  with a CPU form (ONNX Runtime's fused attention) gets that form in fp16 too: ONNX Runtime runs
  it on a CPU and, in a CUDA graph, on CUDA (its GroupQueryAttention has fp16 CUDA kernels only).
- ``int8-wo``: int8 weights, per output channel, symmetric, stored as int8 initializers behind
  DequantizeLinear; activations stay fp32. No calibration. Its engine-ready graphs also get a
  CPU form (``cpu_file``): ONNX Runtime's ``MatMulNBits`` quantizer, 8-bit symmetric blocks of
  128 inputs (64 where 128 does not divide the hidden size) with int8 activations per block
  (accuracy level 4: MLAS's integer kernels), made from the source's CPU form where it has one.
  On a CPU ONNX Runtime runs DequantizeLinear + MatMul as an fp32 GEMM over weights it
  dequantizes every call; MatMulNBits reads a quarter of the bytes (README: CPU figures).
  TensorRT parses only the QDQ form: plans are built from ``file``.
- ``int8``: W8A8 Q/DQ as ONNX Runtime's ``quantize_static`` writes it: symmetric int8 activations with
  ranges calibrated on real ABC (see calibration.py), per-channel symmetric int8 weights, bias in
  float: the layout TensorRT fuses.

Graph IO names and dtypes do not change (fp32 in, fp32 out), so every backend feeds a variant
exactly as it feeds the fp32 model. The manifest records the source fp32 directory and its hash,
the library and settings, the calibration set and what was kept in higher precision.

A source whose weights are stored as external data (NotaGen-X, 2 GB in fp32) gives variants
stored the same way (``<graph>.onnx.data``); each tool loads the graph by path or one copy of it.
"""

from __future__ import annotations

import difflib
import gc
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import notagen_trt
from notagen_trt.config import VOCAB_SIZE
from notagen_trt.errors import NotaGenError
from notagen_trt.files import (GRAPH_FILE_KEYS, claim_out_dir, out_of_space_is_one_line, prepare_out_dir,
                               require_free_space, stage, staging_prefix, writing)
from notagen_trt.manifest import (ENGINE_GRAPHS, GRAPH_NAMES, MANIFEST_NAME, file_checksums, layout_graphs, manifest_digest,
                                  model_config, read_manifest, with_checksum)

from . import calibration
from .calibration import CalibrationFeeds, FeedReader

PRECISIONS = ("fp16", "int8-wo", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ["MatMul", "Gemm"]  # the GEMMs TensorRT runs in int8; everything else stays float
FP16_ALWAYS_FP32 = ["LayerNormalization", "Softmax"]  # GPT-2's known fp16 overflow points
# The engine-ready graphs keep none: their LayerNormalization and Softmax nodes run as fp16 ops,
# which ONNX Runtime (and TensorRT's normalization layer) accumulate in fp32; the casts around
# each island were a fifth of the kernels a patch launches, and they kept ONNX Runtime from
# fusing the residual Add into the LayerNorm.
FP16_ALWAYS_FP32_ENGINE: list[str] = []
FP16_HEADROOM = 65504.0 / 16  # a node whose measured |activation| exceeds this stays fp32
MASK_FILL = 1e38  # attention masks fill with float32 min; the fp16 converter clips it harmlessly



def quantize(model_dir: str | Path, precision: str, out_dir: str | Path, calib: str | Path | None = None,
             calib_pieces: int = calibration.DEFAULT_PIECES, method: str = "minmax",
             exclude: list[str] | None = None, log=lambda msg: None, force: bool = False) -> dict[str, Any]:
    """Write the ``precision`` variant of the fp32 ONNX model in ``model_dir`` to ``out_dir``
    (graphs first, manifest last, nothing half-written); return its manifest.

    ``exclude``: node names (int8) kept in float on top of the defaults. ``calib`` /
    ``calib_pieces``: calibration corpus (default: the shipped ``calib`` split) and how many
    pieces of it to run (fp16 uses it to measure activations, int8 to calibrate ranges).
    ``out_dir`` may hold an earlier variant of the same precision (replaced); anything else is
    refused unless ``force``. Nothing is written outside ``out_dir``'s scratch folder."""
    if precision not in PRECISIONS:
        raise NotaGenError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if method not in CALIBRATION_METHODS:
        raise NotaGenError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if calib is not None and not Path(calib).exists():  # before any work (and before "collecting ...")
        raise NotaGenError(f"{calib}: no such file or folder of .abc pieces (--calib)")
    manifest = _fp32_source(model_dir)
    _check_exclude(model_dir, manifest, precision, exclude or [])
    if out_dir.resolve() == model_dir.resolve():
        raise NotaGenError(f"{out_dir}: the variant would overwrite its source; choose another --out")
    claim = claim_out_dir(prepare_out_dir(out_dir, "quantize"), "quantize", "onnx", precision, force)
    # ONNX Runtime writes an "-inferred" copy (and for int8 an augmented one) beside the variant.
    source_bytes = sum((model_dir / g[k]).stat().st_size for g in manifest["graphs"].values()
                       for k in GRAPH_FILE_KEYS if g.get(k))
    require_free_space(out_dir, 3 * source_bytes, "quantize")
    feeds = None
    if precision in ("fp16", "int8"):
        log(f"collecting calibration inputs from {calib_pieces} pieces")
        feeds = calibration.collect(model_dir, calib, calib_pieces)
    # Scratch inside the output folder, removed on every way out (SIGKILL aside: the next run
    # removes that); ONNX Runtime's tools write "-inferred" copies beside the graph they are
    # given, so they get links to the source graphs in here, never the source folder itself.
    with writing(out_dir), out_of_space_is_one_line(out_dir), \
            tempfile.TemporaryDirectory(prefix=staging_prefix("quantize"), dir=out_dir) as tmp:
        scratch = Path(tmp)
        graphs = manifest["graphs"]
        names = _variant_graphs(manifest, precision, log)
        sources = {name: _linked_source(model_dir, graphs[name], scratch) for name in names}
        external = {name: bool(graphs[name].get("external_data")) for name in names}
        details = {name: _variant_graph(sources[name], scratch / f"{name}.onnx", precision,
                                        feeds.graph(name) if feeds and name in GRAPH_NAMES else None,
                                        method, exclude or [], log, external=external[name])
                   for name in names}
        recipe = _recipe(precision, method, feeds, details)
        if precision == "fp16":
            for name in ENGINE_GRAPHS:
                if cpu := graphs.get(name, {}).get("cpu_file"):
                    src = _linked_source(model_dir, {"file": cpu, "external_data": graphs[name].get("cpu_external_data")},
                                         scratch)
                    details[f"{name}.cpu"] = _variant_graph(src, scratch / f"{name}.cpu.onnx", precision, None, method,
                                                            [], log, external=external[name], graph=name)
        if precision == "int8-wo" and names != GRAPH_NAMES:
            forms, block = {}, nbits_block(model_config(manifest).hidden_size)
            for name in ENGINE_GRAPHS:
                log(f"int8-wo: {name}, CPU form (MatMulNBits)")
                cpu = graphs[name].get("cpu_file")  # the source's CPU form (export/engine_graphs.py), if any
                src = _linked_source(model_dir, {"file": cpu, "external_data": graphs[name].get("cpu_external_data")},
                                     scratch) if cpu else sources[name]
                forms[name] = _int8_cpu_form(src, scratch / f"{name}.cpu.onnx", block, external[name])
            recipe["cpu_form"] = {
                "library": f"onnxruntime {ort.__version__} (onnxruntime.quantization.MatMulNBitsQuantizer)",
                "weights": f"int8 symmetric, blocks of {block} inputs", "activations": "int8 per block "
                f"(MatMulNBits accuracy level {NBITS_ACCURACY})", "graphs": forms}
        variant = with_checksum(_variant_manifest(model_dir, manifest, precision, scratch, recipe, names))
        written = _commit(scratch, out_dir, variant)
    claim.finish(written)
    return variant


def _variant_graphs(manifest: dict[str, Any], precision: str, log) -> tuple[str, ...]:
    """The graphs a variant holds: all of the source's, except that int8 (W8A8) leaves out the
    engine-ready graphs, whose activations its calibration (step-graph feeds) does not see."""
    names = layout_graphs(manifest)
    if precision == "int8" and names != GRAPH_NAMES:
        log("int8: the engine-ready graphs are left out (calibration covers the step graphs); "
            "the variant holds the step graphs")
        return GRAPH_NAMES
    return names


def _check_exclude(model_dir: Path, manifest: dict[str, Any], precision: str, exclude: list[str]) -> None:
    """Every ``exclude`` name must be a quantizable node of the variant's graphs: a misspelt name
    would otherwise be quantized without a word."""
    if not exclude:
        return
    if precision != "int8":
        raise NotaGenError(f"--exclude applies to int8 (its activations are calibrated), not {precision}")
    nodes = set()
    for name in _variant_graphs(manifest, precision, lambda msg: None):
        graph = onnx.load(str(model_dir / manifest["graphs"][name]["file"]), load_external_data=False).graph
        nodes |= {n.name for n in graph.node if n.op_type in QUANTIZED_OPS}
    unknown = [n for n in exclude if n not in nodes]
    if unknown:
        near = sorted({m for n in unknown for m in difflib.get_close_matches(n, nodes, n=3, cutoff=0.6)})
        raise NotaGenError(f"--exclude: no {'/'.join(QUANTIZED_OPS)} node named {', '.join(map(repr, unknown))} in "
                           f"{model_dir}'s graphs" + (f"; near: {', '.join(near)}" if near else "")
                           + f" ({len(nodes)} such nodes, e.g. {', '.join(sorted(nodes)[:3])})")


def _fp32_source(model_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(model_dir, expect_kind="onnx")
    if manifest.get("precision") != "fp32":
        raise NotaGenError(f"{model_dir}: variants are made from the fp32 model, this one is "
                           f"{manifest.get('precision')!r}; pass the directory written by `notagen-trt export`")
    return manifest


def _linked_source(model_dir: Path, graph: dict, scratch: Path) -> Path:
    """A link to (or, where links are not allowed, a copy of) a source graph inside ``scratch``,
    with a copy of its external data beside it: onnx refuses to read weights through a symlink or
    a hard link (its path-traversal guard), and the tools resolve them next to the graph."""
    src = model_dir / graph["file"]
    link = scratch / "source" / src.name
    link.parent.mkdir(exist_ok=True)
    try:
        link.symlink_to(src.resolve())
    except OSError:
        shutil.copyfile(src, link)
    if graph.get("external_data"):
        shutil.copyfile(model_dir / graph["external_data"], link.parent / graph["external_data"])
    return link


def _variant_graph(src: Path, dst: Path, precision: str, feeds: list[dict] | None, method: str,
                   exclude: list[str], log, external: bool = False, graph: str | None = None) -> dict:
    """Write the variant of graph ``src`` to ``dst``, its weights in ``dst.data`` when ``external``
    (the source's are: a variant is never larger than its fp32 source, so the 2 GB cap holds too).
    ``graph``: which graph ``src`` is a form of (default: its file's stem)."""
    # The calibration run's sessions (OrtBackend's lazy loaders are reference cycles) and the
    # previous graph's models wait for the cycle collector: free them before loading another copy.
    gc.collect()
    graph = graph or src.stem
    log(f"{precision}: {dst.stem}")
    half_io: list[str] = []
    if precision == "fp16":
        engine = graph in ENGINE_GRAPHS
        half_io = _fp16_caches(src) if engine else []
        details = _fp16(src, dst, feeds, external, half_io, engine)
    elif precision == "int8-wo":
        details = _int8_weight_only(src, dst, external)
    else:
        details = _int8(src, dst, feeds, method, exclude, external)
    onnx.checker.check_model(str(dst))
    _check_io(src, dst, half_io)
    return {**details, **({"float16_io": half_io} if half_io else {})}


def _fp16_caches(src: Path) -> list[str]:
    """The KV cache inputs and outputs of an engine-ready graph: its fp16 variant keeps them in
    fp16, so no call casts a whole cache (they stay on the device between calls anyway)."""
    g = onnx.load(str(src), load_external_data=False).graph
    return [v.name for v in [*g.input, *g.output] if v.name.startswith(("past_key_values.", "present."))]


def _variant_manifest(model_dir: Path, manifest: dict, precision: str, scratch: Path, recipe: dict,
                      names: tuple[str, ...]) -> dict:
    return {
        **{k: v for k, v in manifest.items() if k not in ("parity",)},
        "precision": precision,
        "layout": "engine" if names != GRAPH_NAMES else "growing",
        "source": {
            "model_dir": str(model_dir.resolve()),
            "manifest_sha256": manifest_digest(model_dir),
            "precision": "fp32",
            "checkpoint": manifest.get("source", {}).get("checkpoint"),
            "checkpoint_sha256": manifest.get("source", {}).get("sha256"),
        },
        "graphs": {g: {**_with_half_io(_without_cpu_form(manifest["graphs"][g]), recipe["kept_in_higher_precision"][g]),
                       **_written(scratch, g)} for g in names},
        "quantization": recipe,
        "tools": {**manifest.get("tools", {}), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                  "notagen_trt": notagen_trt.__version__},
    }


def _with_half_io(entry: dict, details: dict) -> dict:
    """A graph's manifest entry with the IO its variant holds in fp16 declared so."""
    half = set(details.get("float16_io") or ())
    if not half:
        return entry
    retype = lambda specs: [{**s, "dtype": "float16"} if s["name"] in half else s for s in specs]  # noqa: E731
    layout = {**entry["kv_layout"], "dtype": "float16"} if "kv_layout" in entry else None
    return {**entry, "inputs": retype(entry["inputs"]), "outputs": retype(entry["outputs"]),
            **({"kv_layout": layout} if layout else {})}


def _data_file(scratch: Path, graph: str, suffix: str = ".onnx") -> str | None:
    """The name of a written variant graph's external data file, None when it has none."""
    name = f"{graph}{suffix}.data"
    return name if (scratch / name).is_file() else None


def _without_cpu_form(entry: dict) -> dict:
    """A source graph's entry without its CPU form: a variant names its own, or has none."""
    return {k: v for k, v in entry.items() if k not in ("cpu_file", "cpu_external_data")}


def _written(scratch: Path, graph: str) -> dict[str, Any]:
    """A variant graph's files as its manifest entry names them, with their checksums: the graph,
    its external data, and its CPU form where one was written (with its own external data)."""
    files: dict[str, Any] = {"file": f"{graph}.onnx", "external_data": _data_file(scratch, graph)}
    if (scratch / f"{graph}.cpu.onnx").is_file():
        files["cpu_file"] = f"{graph}.cpu.onnx"
        if data := _data_file(scratch, graph, ".cpu.onnx"):
            files["cpu_external_data"] = data
    return {**files, "checksums": file_checksums(scratch, [n for n in files.values() if n])}


def _commit(scratch: Path, out_dir: Path, variant: dict) -> list[str]:
    """Stage the manifest (the write that can run out of space), rename the graphs in (weights
    before the graphs that point at them), then the manifest."""
    staged = stage(out_dir / MANIFEST_NAME, json.dumps(variant, indent=2) + "\n")
    names = [e[k] for e in variant["graphs"].values() for k in GRAPH_FILE_KEYS if e.get(k)]
    try:
        for name in names:
            os.chmod(scratch / name, 0o644)
            os.replace(scratch / name, out_dir / name)
        os.replace(staged, out_dir / MANIFEST_NAME)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return [*names, MANIFEST_NAME]


def _recipe(precision: str, method: str, feeds: CalibrationFeeds | None, details: dict) -> dict:
    library = f"onnxruntime {ort.__version__}"
    if precision == "fp16":
        return {"library": f"{library} (onnxruntime.transformers.float16.convert_float_to_float16)",
                "weights": "float16", "activations": "float16",
                "settings": {"keep_io_types": True, "op_block_list": FP16_ALWAYS_FP32,
                             "fp32_above_abs": FP16_HEADROOM},
                "calibration": {**feeds.describe(), "method": "max |activation| per tensor (fp32 graphs)"},
                "kept_in_higher_precision": details}
    if precision == "int8-wo":
        return {"library": f"{library} (onnxruntime.quantization.QDQQuantizer, weights only)",
                "weights": "int8 symmetric per-channel (QDQ)", "activations": "float32",
                "settings": {"op_types": QUANTIZED_OPS, "per_channel": True, "weight_symmetric": True},
                "calibration": None, "kept_in_higher_precision": details}
    return {"library": f"{library} (onnxruntime.quantization calibrator + QDQQuantizer, quantize_static's QDQ recipe)",
            "weights": "int8 symmetric per-channel (QDQ)", "activations": "int8 symmetric per-tensor (QDQ)",
            "settings": {"op_types": QUANTIZED_OPS, "per_channel": True, **_INT8_OPTIONS},
            "calibration": {**feeds.describe(), "method": method},
            "kept_in_higher_precision": details}


def _check_io(src: Path, dst: Path, half_io: list[str] = ()) -> None:
    """The variant must keep the fp32 graph's IO names, dtypes and dims (``half_io`` turned fp16):
    the manifest promises them."""
    def io(path: Path, half: tuple[str, ...] = ()) -> list:
        g = onnx.load(str(path), load_external_data=False).graph
        out = []
        for v in [*g.input, *g.output]:
            t = onnx.TypeProto()
            t.CopyFrom(v.type)
            if v.name in half:
                t.tensor_type.elem_type = onnx.TensorProto.FLOAT16
            out.append((v.name, t.SerializeToString()))
        return out

    if io(src, tuple(half_io)) != io(dst):
        raise NotaGenError(f"{dst.name}: the quantizer changed the graph IO; this is a bug, report it with the "
                           "ONNX Runtime version")


# ---------------------------------------------------------------- fp16

def _calibrate(model_path: Path, feeds: list[dict], method: Any, op_types: list[str] | None,
               external: bool) -> Any:
    """ONNX Runtime's calibrator over ``feeds``, one feed per collection pass (feeds differ in
    shape, which the histogram collectors cannot stack, and a big model's augmented outputs for
    all feeds at once would not fit in memory): its TensorsData. Its augmented copy of the model
    goes beside ``model_path`` (external data when ``external``: over 2 GB it must)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="ort.calib.", dir=model_path.parent) as tmp:
        calibrator = create_calibrator(model_path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, use_external_data_format=external)
        reader = FeedReader(feeds)
        for i in range(len(feeds)):
            reader.set_range(i, i + 1)
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator  # its session maps the augmented model's weights: release it before the folder goes
    return ranges


def activation_peaks(model_path: Path, feeds: list[dict], external: bool = False) -> dict[str, float]:
    """Max |value| of every float tensor over the feeds (fp32 graph, ONNX Runtime's MinMax
    calibrator), ignoring attention-mask fill values."""
    from onnxruntime.quantization.calibrate import CalibrationMethod

    ranges = _calibrate(model_path, feeds, CalibrationMethod.MinMax, None, external)
    peaks = {}
    for name, r in ranges.data.items():
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in r.range_value)
        values = [abs(v) for v in (lo, hi) if abs(v) < MASK_FILL]
        peaks[name] = max(values, default=0.0)
    return peaks


def _fp16(src: Path, dst: Path, feeds: list[dict] | None, external: bool = False, half_io: list[str] = (),
          engine: bool = False) -> dict:
    """``feeds`` None (the engine-ready graphs, which calibration does not feed): nothing is
    measured; their step graphs' measurements are in the same manifest."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    # First: its calibrator holds a copy of the weights.
    peaks = activation_peaks(src, feeds, external) if feeds is not None else {}
    nodes = onnx.load(str(src), load_external_data=False).graph.node  # names only, no weights
    hot = {t for t, p in peaks.items() if p > FP16_HEADROOM}
    # A tensor out of fp16 range must be produced *and* consumed in fp32.
    blocked = sorted({n.name for n in nodes if hot & (set(n.output) | set(n.input))})
    # By path: the converter then infers shapes on the file (a ModelProto over 2 GB cannot be
    # serialized for that) and loads the weights once, converting them in place.
    graph = onnx.load(str(src), load_external_data=False).graph
    keep = [v.name for v in [*graph.input, *graph.output] if v.name not in half_io]  # fp32 IO but ``half_io``
    op_types = FP16_ALWAYS_FP32_ENGINE if engine else FP16_ALWAYS_FP32
    converted = convert_float_to_float16(str(src), keep_io_types=keep, op_block_list=op_types,
                                         node_block_list=blocked)
    _drop_repeated_casts(converted)
    if engine:
        _sort_every_rank(converted)
    sorted_model = OnnxModel(converted)
    sorted_model.topological_sort()  # the converter appends its IO casts; builders want sorted nodes
    _save(sorted_model.model, dst, external)
    kept = [n.name for n in nodes if n.op_type in op_types]
    return {"op_types": op_types, "nodes_by_op_type": len(kept), "nodes_measured": blocked,
            "max_abs_activation": round(max(peaks.values(), default=0.0), 3)}


def _sort_every_rank(model: onnx.ModelProto) -> None:
    """ONNX Runtime CUDA runs the fp16 CPU form in a CUDA graph, which holds no shape computed from
    data: the ranks its draws sort (export/engine_graphs.py ``ranks_of_the_call``: the largest
    top-k of the call) become all 128, which draws the same characters."""
    for node in model.graph.node:
        if node.op_type == "ReduceMax" and node.input[:1] == ["top_k"]:
            node.op_type = "Constant"
            del node.input[:], node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(np.int64(VOCAB_SIZE))))


def _drop_repeated_casts(model: onnx.ModelProto) -> None:
    """Some converter versions cast a weight that several kept-fp32 nodes share once per node,
    under one output name (the unrolled char steps share every LayerNorm weight 16 times); keep
    the first of such identical casts, so the graph stays in SSA form."""
    made: dict[str, tuple] = {}
    nodes = []
    for node in model.graph.node:
        key = (node.op_type, tuple(node.input), tuple(a.SerializeToString() for a in node.attribute))
        if node.op_type == "Cast" and made.get(node.output[0]) == key:
            continue
        made.update({o: key for o in node.output})
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _save(model: onnx.ModelProto, dst: Path, external: bool) -> None:
    """Save ``model`` to ``dst``; when ``external``, its weights to ``dst.data`` as export does."""
    if external:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{dst.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


# ---------------------------------------------------------------- int8

_INT8_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,  # TensorRT adds the bias in float after the int8 GEMM
    "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,  # Q/DQ on GEMM inputs only
}


def _quiet_quantizer():
    """ONNX Runtime's quantizer logs a pre-processing hint per call; keep the CLI output clean."""
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def _int8_weight_only(src: Path, dst: Path, external: bool = False) -> dict:
    """ONNX Runtime's QDQ quantizer with activation quantization switched off: it writes the int8
    per-channel weights and their DequantizeLinear nodes, and leaves every activation in float."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType, load_model_with_shape_infer

    class WeightOnly(QDQQuantizer):
        def quantize_activation_tensor(self, tensor_name: str) -> None:
            return None

        def quantize_output_same_as_input(self, output_name: str, input_name: str, node_name: str) -> None:
            return None

    _quiet_quantizer()
    model = load_model_with_shape_infer(src)
    quantizer = WeightOnly(model, True, False, QuantType.QInt8, QuantType.QInt8,
                           TensorsData(CalibrationMethod.MinMax, {}), [], [], QUANTIZED_OPS, dict(_INT8_OPTIONS))
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=external)  # weights in dst.data
    return _float_gemms(dst, "weights")


def nbits_block(hidden_size: int) -> int:
    """Inputs per int8 block of the CPU form: 128 (NotaGen-small on two cores: blocks of 32 / 64 /
    128 took 33 / 25 / 21 ms a patch), or 64 where 128 does not divide the hidden size, whose
    last block would be padding (the demo's 192: 0.953x the time of blocks of 128)."""
    return 128 if hidden_size % 128 == 0 else 64


NBITS_ACCURACY = 4  # MatMulNBits accuracy level 4: int8 activations per block, integer dot products


def _int8_cpu_form(src: Path, dst: Path, block: int, external: bool = False) -> dict:
    """The CPU form of an int8-wo graph (module doc), from the fp32 source graph ``src``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    _quiet_quantizer()
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=NBITS_ACCURACY,
                                          bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    _save(quantizer.model.model, dst, external)
    onnx.checker.check_model(str(dst))
    _check_io(src, dst, [])
    graph = onnx.load(str(dst), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return {"matmulnbits": sum(n.op_type == "MatMulNBits" for n in graph.node),
            "float_matmuls_with_weights": [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]}


def _int8(src: Path, dst: Path, feeds: list[dict], method: str, exclude: list[str], external: bool = False) -> dict:
    """What ``quantize_static`` (QDQ, per-channel, one feed per calibration pass) does, in two
    steps: calibrate, release the calibrator's copy of the model, then quantize the one copy
    loaded for that (quantize_static holds both at once, and puts the augmented model in /tmp)."""
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    _quiet_quantizer()
    names = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
    ranges = _calibrate(src, feeds, methods[method], QUANTIZED_OPS, external)
    quantizer = QDQQuantizer(load_model_with_shape_infer(src), True, False, QuantType.QInt8, QuantType.QInt8, ranges,
                             [], [n for n in exclude if n in names], QUANTIZED_OPS, dict(_INT8_OPTIONS))
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=external)  # weights in dst.data
    return _float_gemms(dst, "inputs")


def _float_gemms(path: Path, what: str) -> dict:
    """Which MatMul / Gemm nodes of a quantized graph still take float ``what`` (and so run in
    higher precision), from the graph itself rather than from the settings."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    initializers = {i.name for i in graph.initializer}
    kept = []
    for n in graph.node:
        if n.op_type not in QUANTIZED_OPS:
            continue
        inputs = n.input[1:2] if what == "weights" else n.input[:2]
        if any(producers.get(i) != "DequantizeLinear" and (what == "inputs" or i in initializers) for i in inputs):
            kept.append(n.name)
    return {"float_gemms": kept}
