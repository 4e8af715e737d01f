"""Compare two backends / precisions of the step graphs on real inputs (``notagen-trt verify``).

The subject (an ONNX directory run in ONNX Runtime, or an engine directory run in TensorRT) and
the reference (``torch`` for the PyTorch checkpoint the subject came from, or another ONNX /
engine directory) become Polygraphy runners over the two step graphs. The inputs are real:
pieces from ``calibration_data/heldout`` encoded into patches, and KV caches produced by the
reference itself, in four phases per piece (patch prefill, patch step, char prefill, char step).
Polygraphy's ``Comparator`` runs both and ``CompareFunc.simple`` gives the per-output error
statistics. Default tolerances are the looser precision's (``gates.VERIFY_TOLERANCES``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from notagen_trt.config import BOS_ID
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import GRAPH_NAMES, GraphIO, graph_io, model_config, read_manifest, source_checkpoint

from .gates import verify_tolerance

Infer = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]  # (graph, feeds) -> outputs


class Target:
    """One side of a comparison: a label, its precision and its graph-level ``infer``."""

    def __init__(self, label: str, precision: str, infer: Infer) -> None:
        self.label, self.precision, self.infer = label, precision, infer


def _ort_infer(model_dir: Path) -> Infer:
    from notagen_trt.runtime.onnx_backend import OrtBackend

    backend = OrtBackend(model_dir, "cpu")  # its sessions, loaded and checked the runtime's way
    graphs = {"patch_decoder": backend.patch, "char_decoder": backend.char}
    dtypes = {g: {s.name: np.dtype(s.dtype) for s in graph.io.inputs} for g, graph in graphs.items()}

    def infer(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = graphs[graph]
        cast = {n: v.astype(dtypes[graph][n], copy=False) for n, v in feeds.items()}
        return dict(zip(g.io.output_names, g.session.run(list(g.io.output_names), cast)))
    return infer


def _torch_infer(checkpoint: Path, manifest: dict) -> Infer:
    import torch

    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.onnx_export import CharStep, PatchStep

    model = load_model(checkpoint).float().eval()
    modules = {"patch_decoder": PatchStep(model.patch_level_decoder), "char_decoder": CharStep(model.char_level_decoder)}
    ios = {g: graph_io(manifest, g) for g in GRAPH_NAMES}

    def infer(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        io = ios[graph]
        args = [torch.from_numpy(np.asarray(feeds[s.name])).to(torch.int64 if s.dtype == "int64" else torch.float32)
                for s in io.inputs]
        with torch.no_grad():
            out = modules[graph](*args)
        return {name: t.numpy() for name, t in zip(io.output_names, out)}
    return infer


def _trt_infer(engine_dir: Path) -> Infer:
    from notagen_trt.runtime.trt_backend import TrtBackend

    return TrtBackend(engine_dir).infer


def resolve(target: str, subject_dir: str | Path, checkpoint: str | Path | None = None) -> Target:
    """``torch`` (the checkpoint ``subject_dir`` came from, or ``checkpoint``), an ONNX directory
    or an engine directory, ready to run."""
    if target == "torch":
        path = source_checkpoint(subject_dir, checkpoint)
        return Target(f"pytorch:{path.name}", "fp32", _torch_infer(path, read_manifest(subject_dir)))
    directory = Path(target)
    manifest = read_manifest(directory)
    precision = manifest.get("precision", "fp32")
    if manifest["kind"] == "engine":
        return Target(f"tensorrt-{manifest['engine']['flavor']}:{precision}", precision, _trt_infer(directory))
    return Target(f"onnxruntime:{precision}", precision, _ort_infer(directory))


def real_feeds(manifest: dict, infer: Infer, data: Path, pieces: int, prefill: int = 24,
               prefix: int = 6) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph, the feeds of four phases per piece, KV caches computed by ``infer``."""
    from notagen_trt.corpus import read_pieces
    from notagen_trt.runtime import codec
    from notagen_trt.runtime.onnx_backend import empty_past

    config = model_config(manifest)
    patch, char = (graph_io(manifest, g) for g in GRAPH_NAMES)
    texts = read_pieces(data)
    chosen = [texts[i] for i in np.linspace(0, len(texts) - 1, min(pieces, len(texts))).astype(int)]
    feeds: dict[str, list] = {g: [] for g in GRAPH_NAMES}
    empty = empty_past(config, 1)
    for _, text in chosen:
        patches = codec.encode_train(text)
        k = max(1, min(prefill, len(patches) - 2, config.patch_length - 2))
        first = {patch.head_names[0]: patches[None, :k], **{n: empty for n in patch.past_names}}
        out = infer("patch_decoder", first)
        step = {patch.head_names[0]: patches[None, k:k + 1], **_past_from(out, patch)}
        hidden = infer("patch_decoder", step)[patch.output][:, -1].astype(np.float32)
        chars = patches[min(k + 1, len(patches) - 1)]
        ids_name, hidden_name = char.head_names
        c_first = {ids_name: np.array([[BOS_ID, *chars[:prefix]]], dtype=np.int64), hidden_name: hidden,
                   **{n: empty for n in char.past_names}}
        c_out = infer("char_decoder", c_first)
        c_step = {ids_name: chars[None, prefix:prefix + 1], hidden_name: np.zeros_like(hidden), **_past_from(c_out, char)}
        feeds["patch_decoder"] += [first, step]
        feeds["char_decoder"] += [c_first, c_step]
    return feeds


def _past_from(outputs: dict[str, np.ndarray], io: GraphIO) -> dict[str, np.ndarray]:
    """The next call's past inputs: this call's present outputs, layer by layer."""
    return {past: outputs[present] for past, present in zip(io.past_names, io.present_names)}


def compare(subject: Target, reference: Target, feeds: dict[str, list], atol: float, rtol: float) -> dict[str, Any]:
    """Polygraphy comparison per graph; per output: max / mean |diff|, max relative diff, pass."""
    from polygraphy import comparator
    from polygraphy.backend.base import BaseRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    # Its per-output "[E] FAILED" lines (a hundred on a failing variant) say what the report says, on
    # stdout, where `verify --json` writes its JSON: only a fault of Polygraphy's own is printed.
    G_LOGGER.module_severity = G_LOGGER.CRITICAL

    class StepRunner(BaseRunner):
        def __init__(self, target: Target, graph: str) -> None:
            super().__init__(name=f"{target.label}/{graph}")
            self._infer, self._graph = target.infer, graph

        def get_input_metadata_impl(self):
            from polygraphy.common import TensorMetadata

            meta = TensorMetadata()
            for name, value in feeds[self._graph][0].items():
                meta.add(name, value.dtype, [None] * value.ndim)
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = self._infer(self._graph, feed_dict)
            self.inference_time = time.perf_counter() - start
            return OrderedDict((n, np.asarray(v, dtype=np.float32)) for n, v in out.items())

    # Polygraphy >= 0.53 deprecates CompareFunc.simple for SimpleCompareFunc (same arguments).
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    report: dict[str, Any] = {"subject": subject.label, "reference": reference.label, "atol": atol, "rtol": rtol,
                              "passed": True, "graphs": {}}
    for graph in GRAPH_NAMES:
        runners = [StepRunner(subject, graph), StepRunner(reference, graph)]
        results = Comparator.run(runners, data_loader=feeds[graph])
        accuracy = Comparator.compare_accuracy(results, compare_func=simple(atol=atol, rtol=rtol))
        stats: dict[str, dict] = {}
        # Polygraphy >= 0.53 returns one AccuracyResult per compare function, older ones a single one.
        per_func = [accuracy] if hasattr(accuracy, "values") else list(accuracy)
        iterations = [it for result in per_func for its in result.values() for it in its]
        for name, r in ((n, r) for it in iterations for n, r in it.items()):
            s = stats.setdefault(name, {"max_abs": 0.0, "mean_abs": [], "max_rel": 0.0, "passed": True})
            s["max_abs"] = max(s["max_abs"], r.max_absdiff)
            s["mean_abs"].append(r.mean_absdiff)
            s["max_rel"] = max(s["max_rel"], r.max_reldiff)
            s["passed"] = s["passed"] and bool(r)
        for s in stats.values():
            s["mean_abs"] = float(np.mean(s["mean_abs"]))
        report["graphs"][graph] = {"inputs": len(feeds[graph]), "outputs": stats}
        report["passed"] = report["passed"] and bool(accuracy)
    return report


def verify(model_dir: str | Path, against: str = "torch", data: str | Path | None = None, pieces: int = 3,
           atol: float | None = None, rtol: float | None = None, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The report of ``notagen-trt verify``: ``model_dir`` against ``against`` on ``pieces``
    held-out pieces; ``atol`` / ``rtol`` default to the looser precision's tolerance."""
    from notagen_trt.corpus import default_split

    if pieces < 1:
        raise NotaGenError(f"--pieces must be at least 1, got {pieces}")
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    subject = resolve(str(model_dir), model_dir, checkpoint)
    reference = resolve(against, model_dir, checkpoint)
    default_atol, default_rtol = verify_tolerance(subject.precision, reference.precision)
    feeds = real_feeds(manifest, reference.infer, Path(data) if data else default_split("heldout"), pieces)
    report = compare(subject, reference, feeds, default_atol if atol is None else atol,
                     default_rtol if rtol is None else rtol)
    report["pieces"] = min(pieces, len(feeds["patch_decoder"]) // 2)
    return report
