"""`notagen-trt verify`: compare two backends / precisions of the step graphs on real inputs.

The subject (``--model``: an ONNX directory run in ONNX Runtime, or an engine directory run in
TensorRT) and the reference (``--against``: ``torch`` for the PyTorch checkpoint the model came
from, or another ONNX / engine directory) become Polygraphy runners over the two step graphs.
The inputs are real: pieces from ``calibration_data/heldout`` encoded into patches, and KV caches
produced by the reference itself, in four phases per piece (patch prefill, patch step, char
prefill, char step). Polygraphy's ``Comparator`` runs both and ``CompareFunc.simple`` gives the
per-output error statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from notagen_trt.config import BOS_ID
from notagen_trt.manifest import GRAPH_NAMES, model_config, read_manifest, source_checkpoint

Infer = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]  # (graph, feeds) -> outputs


def _ort_infer(model_dir: Path, manifest: dict) -> Infer:
    from notagen_trt.runtime.onnx_backend import OrtBackend

    backend = OrtBackend(model_dir, "cpu")  # its sessions, loaded and checked the runtime's way
    sessions = {"patch_decoder": backend.patch.session, "char_decoder": backend.char.session}
    dtypes = {g: {i.name: np.float16 if "float16" in i.type else (np.int64 if "int64" in i.type else np.float32)
                  for i in s.get_inputs()} for g, s in sessions.items()}
    outputs = {g: [o.name for o in s.get_outputs()] for g, s in sessions.items()}

    def infer(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {n: v.astype(dtypes[graph][n], copy=False) for n, v in feeds.items()}
        return dict(zip(outputs[graph], sessions[graph].run(None, cast)))
    return infer


def _torch_infer(checkpoint: Path, manifest: dict) -> Infer:
    import torch

    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.onnx_export import CharStep, PatchStep

    model = load_model(checkpoint).float().eval()
    modules = {"patch_decoder": PatchStep(model.patch_level_decoder), "char_decoder": CharStep(model.char_level_decoder)}

    def infer(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = manifest["graphs"][graph]
        args = [torch.from_numpy(np.asarray(feeds[s["name"]])).to(torch.int64 if s["dtype"] == "int64" else torch.float32)
                for s in spec["inputs"]]
        with torch.no_grad():
            out = modules[graph](*args)
        return {s["name"]: t.numpy() for s, t in zip(spec["outputs"], out)}
    return infer


def _trt_infer(engine_dir: Path) -> Infer:
    from notagen_trt.runtime.trt_backend import TrtBackend

    return TrtBackend(engine_dir).infer


def resolve(target: str, subject_dir: Path, subject_manifest: dict, checkpoint: str | None) -> tuple[str, Infer]:
    """(label, infer) for ``torch``, an ONNX directory or an engine directory."""
    if target == "torch":
        path = source_checkpoint(subject_dir, checkpoint)
        return f"pytorch:{path.name}", _torch_infer(path, subject_manifest)
    directory = Path(target)
    manifest = read_manifest(directory)
    if manifest["kind"] == "engine":
        return f"tensorrt-{manifest['engine']['flavor']}:{manifest.get('precision')}", _trt_infer(directory)
    return f"onnxruntime:{manifest.get('precision', 'fp32')}", _ort_infer(directory, manifest)


def real_feeds(manifest: dict, infer: Infer, data: Path, pieces: int, prefill: int = 24,
               prefix: int = 6) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph, the feeds of four phases per piece, KV caches computed by ``infer``."""
    from notagen_trt.corpus import read_pieces
    from notagen_trt.runtime import codec
    from notagen_trt.runtime.onnx_backend import empty_past

    config = model_config(manifest)
    texts = read_pieces(data)
    chosen = [texts[i] for i in np.linspace(0, len(texts) - 1, min(pieces, len(texts))).astype(int)]
    feeds: dict[str, list] = {g: [] for g in GRAPH_NAMES}
    names = {g: [s["name"] for s in manifest["graphs"][g]["inputs"]] for g in GRAPH_NAMES}
    for _, text in chosen:
        patches = codec.encode_train(text)
        k = max(1, min(prefill, len(patches) - 2, config.patch_length - 2))
        p_names, c_names = names["patch_decoder"], names["char_decoder"]

        def empty(layers: int) -> list[np.ndarray]:
            return [empty_past(config, 1)] * (2 * layers)

        first = dict(zip(p_names, [patches[None, :k], *empty(config.patch_num_layers)]))
        out = infer("patch_decoder", first)
        step = dict(zip(p_names, [patches[None, k:k + 1], *list(out.values())[1:]]))
        hidden = next(iter(infer("patch_decoder", step).values()))[:, -1].astype(np.float32)
        chars = patches[min(k + 1, len(patches) - 1)]
        ids = np.array([[BOS_ID, *chars[:prefix]]], dtype=np.int64)
        c_first = dict(zip(c_names, [ids, hidden, *empty(config.char_num_layers)]))
        c_out = infer("char_decoder", c_first)
        c_step = dict(zip(c_names, [chars[None, prefix:prefix + 1], np.zeros_like(hidden), *list(c_out.values())[1:]]))
        feeds["patch_decoder"] += [first, step]
        feeds["char_decoder"] += [c_first, c_step]
    return feeds


def compare(subject: tuple[str, Infer], reference: tuple[str, Infer], feeds: dict[str, list],
            atol: float, rtol: float) -> dict[str, Any]:
    """Polygraphy comparison per graph; per output: max / mean |diff|, max relative diff, pass."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR

    class StepRunner(BaseRunner):
        def __init__(self, label: str, infer: Infer, graph: str) -> None:
            super().__init__(name=f"{label}/{graph}")
            self._infer, self._graph = infer, graph

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

    report: dict[str, Any] = {"subject": subject[0], "reference": reference[0], "atol": atol, "rtol": rtol,
                              "passed": True, "graphs": {}}
    for graph in GRAPH_NAMES:
        runners = [StepRunner(*subject, graph), StepRunner(*reference, graph)]
        results = Comparator.run(runners, data_loader=feeds[graph])
        accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
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


def _cmd_verify(args: argparse.Namespace) -> int:
    from notagen_trt.corpus import default_split
    from notagen_trt.demo import demo_model_dir

    model_dir = Path(args.model) if args.model else demo_model_dir()
    manifest = read_manifest(model_dir)
    subject = resolve(str(model_dir), model_dir, manifest, args.checkpoint)
    reference = resolve(args.against, model_dir, manifest, args.checkpoint)
    feeds = real_feeds(manifest, reference[1], Path(args.data) if args.data else default_split("heldout"), args.pieces)
    report = compare(subject, reference, feeds, args.atol, args.rtol)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['subject']} vs {report['reference']} (atol {args.atol}, rtol {args.rtol}), "
              f"{args.pieces} held-out pieces x 2 phases per graph")
        for graph, entry in report["graphs"].items():
            for name, s in entry["outputs"].items():
                mark = "ok" if s["passed"] else "FAIL"
                print(f"  {graph:13s} {name:26s} max|d| {s['max_abs']:.2e}  mean|d| {s['mean_abs']:.2e}  "
                      f"max rel {s['max_rel']:.2e}  {mark}")
    if not report["passed"]:
        print("notagen-trt verify: outputs differ beyond the tolerance", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare two backends / precisions on real inputs (Polygraphy)")
    p.add_argument("--model", help="ONNX or engine directory to check (default: the demo model's ONNX)")
    p.add_argument("--against", default="torch", help="torch (the PyTorch checkpoint), or an ONNX / engine directory")
    p.add_argument("--checkpoint", help="checkpoint for --against torch (default: the one the model was exported from)")
    p.add_argument("--data", help="folder or file of ABC pieces (default: calibration_data/heldout)")
    p.add_argument("--pieces", type=int, default=3)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)
