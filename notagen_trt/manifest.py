"""The manifest: the contract between pipeline stages (export -> engines -> runtime).

A model or engine directory holds graph files plus ``manifest.json`` describing them: model config,
IO names / dtypes / symbolic shapes, KV layout, precision, source checkpoint hash, tool versions
and check results. Every stage reads the previous stage's manifest through ``read_manifest``,
which refuses with a one-line reason what it cannot use. No torch or onnx here: the runtime reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from notagen_trt.config import ModelConfig
from notagen_trt.errors import NotaGenError
from notagen_trt.files import GRAPH_FILE_KEYS, sha256_all, sha256_cached, sha256_file, write_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("onnx", "engine")
GRAPH_NAMES = ("patch_decoder", "char_decoder")  # every model directory: the step graphs
ENGINE_GRAPHS = ("patch_engine", "context_loader")  # layout "engine" adds these (export/engine_graphs.py)


def write_manifest(directory: str | Path, data: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically: readers see the old manifest or the new one, never half.
    It carries a checksum of what loaders rely on, so a hand edit of that is refused on reading."""
    path = Path(directory) / MANIFEST_NAME
    write_atomic(path, json.dumps(with_checksum(data), indent=2) + "\n")
    return path


_CHECKED = ("kind", "precision", "model", "graphs")  # what loaders rely on: config, files, IO, checksums


def with_checksum(data: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in data.items() if k != "checksum"}, "checksum": _content_digest(data)}


def _content_digest(data: dict[str, Any]) -> str:
    body = {k: data.get(k) for k in _CHECKED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_checksums(directory: str | Path, names: list[str | None]) -> dict[str, dict[str, Any]]:
    """{file: {bytes, sha256}} for a graph's files, recorded in its manifest entry."""
    return {n: {"bytes": (Path(directory) / n).stat().st_size, "sha256": sha256_file(Path(directory) / n)}
            for n in names if n}


def manifest_digest(directory: str | Path) -> str:
    """sha256 of a model directory's manifest (what a precision variant records as its source)."""
    return sha256_file(Path(directory) / MANIFEST_NAME)


def read_manifest(directory: str | Path, expect_kind: str | None = None) -> dict[str, Any]:
    """The validated manifest of ``directory``, or a NotaGenError naming the problem and the fix."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.exists():
        raise NotaGenError(f"{directory}: no such model directory; point at a directory written by `notagen-trt export`")
    if not path.is_file():
        raise NotaGenError(f"{path}: no manifest; point at a directory written by `notagen-trt export` (or re-run it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotaGenError(f"{path}: unreadable manifest ({exc}); re-run the export that wrote it") from None
    if not isinstance(data, dict):
        raise NotaGenError(f"{path}: manifest is not a JSON object; re-run the export that wrote it")
    if "checksum" in data and data["checksum"] != _content_digest(data):
        raise NotaGenError(f"{path}: the manifest was edited after it was written (its checksum differs); re-run the "
                           "stage that wrote it (export, quantize or build) instead of editing it")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise NotaGenError(f"{path}: manifest format_version {version!r} is not supported (this notagen-trt reads "
                           f"{FORMAT_VERSION}); re-export with this version")
    kind = data.get("kind")
    if kind not in KINDS:
        raise NotaGenError(f"{path}: unknown manifest kind {kind!r} (expected one of {', '.join(KINDS)}); re-export")
    if expect_kind is not None and kind != expect_kind:
        raise NotaGenError(f"{path}: this is an {kind!r} directory but an {expect_kind!r} directory is needed here; "
                           f"pass the output of the matching stage")
    try:
        ModelConfig.from_dict(data.get("model") or {})
    except (TypeError, ValueError) as exc:
        raise NotaGenError(f"{path}: invalid model config ({exc}); re-export") from None
    graphs = data.get("graphs")
    if not isinstance(graphs, dict) or any(g not in graphs for g in GRAPH_NAMES):
        raise NotaGenError(f"{path}: manifest must describe graphs {', '.join(GRAPH_NAMES)}; re-export")
    if data.get("layout") == "engine" and any(g not in graphs for g in ENGINE_GRAPHS):
        raise NotaGenError(f"{path}: an engine-ready layout must describe graphs {', '.join(ENGINE_GRAPHS)}; re-export")
    for name, graph in graphs.items():
        for key in GRAPH_FILE_KEYS:
            if graph.get(key) is not None:
                _check_file(directory, path, f"graphs.{name}.{key}", graph[key])
    _check_checksums(directory, path, [graph.get("checksums") or {} for graph in graphs.values()])
    return data


def _check_checksums(directory: Path, manifest_path: Path, checksums: list[dict[str, Any]]) -> None:
    """Each file whose size and sha256 the writer recorded (``checksums``: each graph's) must
    still have them, so a swapped or truncated graph is refused before a backend loads it. Names
    and sizes first; then every file hashed at once (on every core, once per process per file
    version)."""
    recorded = []
    for name, want in (item for entries in checksums for item in entries.items()):
        _check_file(directory, manifest_path, "checksums", name)
        target = directory / name
        recorded.append((target, want))
        size = target.stat().st_size
        if size != want.get("bytes"):
            raise NotaGenError(f"{target}: {size} bytes, but {manifest_path.name} records {want.get('bytes')} "
                               f"(truncated or replaced); re-export the model")
    sha256_all(target for target, _ in recorded)
    for target, want in recorded:
        if sha256_cached(target) != want.get("sha256"):
            raise NotaGenError(f"{target}: the file changed since it was written (sha256 differs from "
                               f"{manifest_path.name}); re-export the model")


def graph_files(manifest: dict[str, Any]) -> list[str]:
    """The ONNX files a model directory's manifest names: each graph's, then its CPU form's."""
    return [f for g in manifest["graphs"].values() for f in (g["file"], g.get("cpu_file")) if f]


def layout_graphs(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The graphs a model directory holds: the step graphs, and the engine-ready ones where its
    layout is ``engine``."""
    return GRAPH_NAMES + (ENGINE_GRAPHS if manifest.get("layout") == "engine" else ())


# What to do about a model of the step graphs only (export --layout growing): it runs, slower.
ENGINE_LAYOUT_FIX = "`notagen-trt export --layout engine` (export's default) writes the engine-ready graphs"


def step_graphs_only(manifest: dict[str, Any]) -> bool:
    """A model without the engine-ready graphs that could have them (int8 W8A8 variants never do:
    calibration feeds the step graphs)."""
    return manifest.get("layout") != "engine" and manifest.get("precision", "fp32") != "int8"


def model_config(manifest: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(manifest["model"])


def graph_file(directory: str | Path, manifest: dict[str, Any], graph: str) -> Path:
    """The path of a graph's main file (already validated by ``read_manifest``)."""
    return Path(directory) / manifest["graphs"][graph]["file"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest lists it: symbolic dims are names."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphIO:
    """A graph's IO from its manifest entry, for every stage that feeds or builds it. The export
    lists inputs as [head..., past key/value per layer] and outputs as [main..., present per layer]
    (the step graphs have one main output; the engine-ready graphs their tokens and row state)."""

    name: str
    file: str
    num_layers: int
    max_positions: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: tuple[dict[str, Any], ...] = ()  # engine graphs: the optimization profiles built
    cpu_file: str | None = None  # what ONNX Runtime runs on a CPU (and on CUDA in fp16), where not ``file`` (same IO)

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    @cached_property
    def head_names(self) -> tuple[str, ...]:
        """The inputs before the KV caches: ``patches``, or ``input_ids`` and ``patch_hidden``."""
        return self.input_names[: -2 * self.num_layers]

    @cached_property
    def past_names(self) -> tuple[str, ...]:
        return self.input_names[-2 * self.num_layers:]

    @cached_property
    def present_names(self) -> tuple[str, ...]:
        return self.output_names[-2 * self.num_layers:]

    @property
    def past_specs(self) -> tuple[TensorSpec, ...]:
        return self.inputs[-2 * self.num_layers:]

    @property
    def output(self) -> str:
        """The main output: the patch hidden states or the char logits."""
        return self.outputs[0].name

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / self.file

    def cpu_path(self, directory: str | Path) -> Path:
        """The graph ONNX Runtime runs on a CPU."""
        return Path(directory) / (self.cpu_file or self.file)


def graph_io(manifest: dict[str, Any], name: str, directory: str | Path | None = None) -> GraphIO:
    """The typed IO of graph ``name`` (``patch_decoder`` / ``char_decoder``) of a manifest read by
    ``read_manifest`` (from ``directory``, named in errors); a malformed entry is one NotaGenError."""
    entry = manifest["graphs"][name]
    where = Path(directory) / MANIFEST_NAME if directory is not None else MANIFEST_NAME
    try:
        layers = int(entry["num_layers"])
        io = GraphIO(name=name, file=entry["file"], num_layers=layers, max_positions=int(entry["max_positions"]),
                     inputs=tuple(_tensor(s) for s in entry["inputs"]),
                     outputs=tuple(_tensor(s) for s in entry["outputs"]),
                     profiles=tuple(entry.get("profiles") or ()), cpu_file=entry.get("cpu_file"))
    except (KeyError, TypeError, ValueError) as exc:
        raise NotaGenError(f"{where}: graphs.{name} is malformed ({type(exc).__name__}: {exc}); "
                           "re-export the model") from None
    if layers < 1 or len(io.inputs) <= 2 * layers or len(io.outputs) <= 2 * layers:
        raise NotaGenError(f"{where}: graphs.{name} lists {len(io.inputs)} inputs and {len(io.outputs)} "
                           f"outputs for {layers} layers (want head inputs and outputs + 2 per layer); re-export")
    return io


def _tensor(spec: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(spec["name"]), str(spec["dtype"]), tuple(spec["shape"]))


def _check_file(directory: Path, manifest_path: Path, field: str, name: object) -> None:
    """A listed file must be a relative path that stays inside the directory and exists."""
    if not isinstance(name, str) or not name:
        raise NotaGenError(f"{manifest_path}: {field} must be a file name; re-export")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or Path(name).is_absolute() or ".." in pure.parts:
        raise NotaGenError(f"{manifest_path}: {field} {name!r} points outside the model directory; only relative "
                           f"paths inside it are allowed (re-export, or fix the manifest)")
    target = (directory / name).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise NotaGenError(f"{manifest_path}: {field} {name!r} resolves outside the model directory (symlink?); "
                           f"copy the file into the directory")
    if not target.is_file():
        raise NotaGenError(f"{manifest_path}: {field} names {name!r}, which is missing; copy the whole directory "
                           f"or re-export")


def source_checkpoint(directory: str | Path, given: str | Path | None = None) -> Path:
    """The checkpoint a model, variant or engine directory came from: ``given``, else the one its
    manifest names (an engine's through the ONNX directory it was built from), else the demo
    checkpoint when the recorded hash is the demo's."""
    if given:
        return Path(given)
    manifest = read_manifest(directory)
    if manifest["kind"] == "engine":
        onnx_dir = (manifest.get("onnx") or {}).get("dir")
        if onnx_dir and (Path(onnx_dir) / MANIFEST_NAME).is_file():
            return source_checkpoint(onnx_dir)
        raise NotaGenError(f"{directory}: the ONNX directory this engine was built from ({onnx_dir}) is not here, "
                           "so its checkpoint is unknown; pass the checkpoint or the ONNX model directory")
    source = manifest.get("source") or {}
    if source.get("checkpoint") and Path(source["checkpoint"]).is_file():
        return Path(source["checkpoint"])
    digest = source.get("sha256") or source.get("checkpoint_sha256")  # export / precision variant
    if digest is None:
        raise NotaGenError(f"{directory}: this model records no source checkpoint (random weights?); pass the "
                           "checkpoint file instead")
    from notagen_trt.demo import demo_checkpoint

    demo = demo_checkpoint()
    if digest == sha256_file(demo):
        return demo
    raise NotaGenError(f"{directory}: the checkpoint this model came from ({source.get('checkpoint')}) is not here; "
                       "pass the checkpoint file instead")
