"""ONNX model directory -> TensorRT plans (full TensorRT or TensorRT-RTX) + engine manifest.

One code path for both flavours (``flavors.py`` holds their differences). Each graph is parsed
into a strongly typed network (precision comes from the ONNX: fp32, fp16 or Q/DQ int8 variants
all build the same way), gets two optimization profiles, and is built with the timing cache
where the flavour honours one:

- profile 0, ``prefill``: past 0..max-1 (opt 0), new 1..max (the context load after a reset and
  the char decoder's first call; zero-length past dims are accepted in a profile);
- profile 1, ``decode``: new = 1, past 1..max-1 (every incremental step).
The engine-ready graphs (``export --layout engine``) get one profile, ``engine``: rows 1..max
batch (opt max), and a context load's patches 1..capacity.
Each symbolic dim (``batch``, ``new_*``, ``past_*``) gets one range per profile, applied to every
input that carries it, so dims that must be equal always get equal values.

Plans and the timing cache are written atomically (scratch file + rename); the manifest last.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from notagen_trt.errors import NotaGenError
from notagen_trt.files import sha256_file, stage, write_atomic
from notagen_trt.manifest import (ENGINE_GRAPHS, FORMAT_VERSION, GraphIO, graph_io, layout_graphs, read_manifest,
                                  write_manifest)
from notagen_trt.runtime.cuda import local_gpu

from .engine_manifest import onnx_digest
from .flavors import Flavor, get_flavor

PLAN_SUFFIX = ".plan"


def dim_ranges(io: GraphIO, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """{profile: {dim name: [min, opt, max]}} for a graph's symbolic dims (see the module doc)."""
    top = io.max_positions
    if io.name in ENGINE_GRAPHS:  # fixed shapes but the row count (and a context load's length)
        dims = {"rows": [1, max_batch, max_batch]}
        if io.name == "context_loader":
            dims["patches"] = [1, top // 2, top]
        return {"engine": dims}
    new_dim = io.inputs[0].shape[1]
    past_dims = {s.shape[2] for s in io.past_specs}
    if len(past_dims) != 1 or not isinstance(new_dim, str):
        raise NotaGenError(f"graph IO {list(io.input_names)} does not have the growing KV layout "
                           "(one symbolic past dim, a symbolic new dim); re-export with `notagen-trt export`")
    (past_dim,) = past_dims
    batch = [1, 1, max_batch]
    return {
        "prefill": {"batch": batch, new_dim: [1, top, top], past_dim: [0, 0, top - 1]},
        "decode": {"batch": batch, new_dim: [1, 1, 1], past_dim: [1, top // 2, top - 1]},
    }


def profiles_for(io: GraphIO, max_batch: int) -> list[dict[str, Any]]:
    """The manifest's profile list: per profile its dim ranges and each input's [min, opt, max] shapes."""
    out = []
    for name, dims in dim_ranges(io, max_batch).items():
        shapes = {}
        for s in io.inputs:
            shapes[s.name] = [[dims[d][k] if isinstance(d, str) else d for d in s.shape] for k in range(3)]
        out.append({"name": name, "dims": dims, "shapes": shapes})
    return out


def network_io(network: Any) -> dict[str, list[dict]]:
    """The parsed network's IO as manifest specs (dynamic dims as -1)."""
    def spec(t: Any) -> dict:
        return {"name": t.name, "dtype": str(t.dtype).split(".")[-1].lower(), "shape": list(t.shape)}
    return {"inputs": [spec(network.get_input(i)) for i in range(network.num_inputs)],
            "outputs": [spec(network.get_output(i)) for i in range(network.num_outputs)]}


def _parse(trt: Any, flavor: Flavor, builder: Any, logger: Any, path: Path) -> tuple[Any, Any]:
    """(network, parser): the parser owns the network's weights, so both stay alive until the build."""
    network = builder.create_network(flavor.network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):  # from the file, so external weights are found beside it
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise NotaGenError(f"{path}: {flavor.title} could not parse the ONNX ({errors or 'no detail'}); "
                           f"re-export the model, or report the unsupported op")
    return network, parser


class _TimingCache:
    """The builder's timing cache, read from and saved to ``path`` (shared by both graphs)."""

    def __init__(self, flavor: Flavor, config: Any, path: Path | None) -> None:
        self.path = path if flavor.timing_cache else None
        self.loaded_bytes = 0
        self.cache = None
        if self.path is None:
            return
        blob = self.path.read_bytes() if self.path.is_file() else b""
        self.cache = config.create_timing_cache(blob)
        if self.cache is None and blob:  # a cache from another TensorRT version: start afresh
            self.cache = config.create_timing_cache(b"")
            blob = b""
        self.loaded_bytes = len(blob)

    def attach(self, config: Any) -> None:
        if self.cache is not None:
            config.set_timing_cache(self.cache, False)

    def save(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        data = self.cache.serialize()
        write_atomic(self.path, memoryview(data))
        return {"path": str(self.path), "loaded_bytes": self.loaded_bytes, "saved_bytes": len(memoryview(data))}


def build_engines(model_dir: str | Path, out_dir: str | Path, flavor: str = "rtx", max_batch: int = 1,
                  compute_capabilities: list[str] | None = None, timing_cache: str | Path | None = None,
                  version_compatible: bool = False, optimization_level: int | None = None,
                  log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Build ``patch_decoder.plan`` and ``char_decoder.plan`` (and the engine-ready graphs' plans
    where the directory holds them) from the ONNX model directory ``model_dir`` into ``out_dir``
    with their manifest; return the manifest."""
    if max_batch < 1:
        raise NotaGenError(f"--max-batch must be at least 1, got {max_batch}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    onnx_manifest = read_manifest(model_dir, expect_kind="onnx")
    if out_dir.resolve() == model_dir.resolve():
        raise NotaGenError(f"{out_dir}: write engines to their own directory (--out), not into the ONNX model's")
    fl = get_flavor(flavor)
    trt = fl.load()
    gpu = local_gpu()
    logger = fl.logger(trt)  # to stderr: stdout is the command's (build --json)
    builder = trt.Builder(logger)
    fl.set_targets(trt, builder.create_builder_config(), compute_capabilities, gpu)  # refuse bad targets before parsing
    cache: _TimingCache | None = None
    out_dir.mkdir(parents=True, exist_ok=True)

    graphs: dict[str, dict] = {}
    staged: dict[Path, Path] = {}  # final plan path -> its temporary file
    try:
        for name in layout_graphs(onnx_manifest):
            spec = graph_io(onnx_manifest, name, model_dir)
            onnx_path = spec.path(model_dir)
            network, _parser = _parse(trt, fl, builder, logger, onnx_path)
            io = network_io(network)
            want = list(spec.input_names), list(spec.output_names)
            if ([s["name"] for s in io["inputs"]], [s["name"] for s in io["outputs"]]) != want:
                raise NotaGenError(f"{onnx_path}: the parsed network's IO differs from the manifest's {want}; re-export")
            profiles = profiles_for(spec, max_batch)
            # Profiles belong to one builder config, so each graph gets its own; the cache is shared.
            graph_config = builder.create_builder_config()
            targets = fl.set_targets(trt, graph_config, compute_capabilities, gpu)
            if version_compatible:
                graph_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            if optimization_level is not None:
                graph_config.builder_optimization_level = optimization_level
            if cache is None:
                cache = _TimingCache(fl, graph_config, Path(timing_cache) if timing_cache else None)
            cache.attach(graph_config)
            for profile in profiles:
                p = builder.create_optimization_profile()
                for tensor, (lo, opt, hi) in profile["shapes"].items():
                    p.set_shape(tensor, lo, opt, hi)
                if graph_config.add_optimization_profile(p) < 0:
                    raise NotaGenError(f"{onnx_path}: {fl.title} rejected the {profile['name']} profile {profile['dims']}")
            log(f"building {name} ({fl.title} {fl.version(trt)}, targets {', '.join(targets['compute_capabilities'])})")
            start = time.perf_counter()
            plan = builder.build_serialized_network(network, graph_config)
            seconds = time.perf_counter() - start
            if plan is None:
                raise NotaGenError(f"{onnx_path}: {fl.title} failed to build a plan (see the messages above); check the "
                                   f"profiles {[p['dims'] for p in profiles]} and the ONNX")
            path = out_dir / f"{name}{PLAN_SUFFIX}"
            # Plans wait under temporary names until every graph is built: an interrupted build
            # leaves the previous engine (plans + manifest) exactly as it was.
            staged[path] = stage(path, memoryview(plan))
            graphs[name] = {
                "file": path.name,
                "external_data": None,
                "num_layers": spec.num_layers,
                "max_positions": spec.max_positions,
                "kv_layout": onnx_manifest["graphs"][name].get("kv_layout"),
                "inputs": [s.to_dict() for s in spec.inputs],
                "outputs": [s.to_dict() for s in spec.outputs],
                "network_io": io,
                "profiles": profiles,
                "plan": {"bytes": staged[path].stat().st_size, "sha256": sha256_file(staged[path])},
                "onnx_file": str(onnx_path.resolve()),
                "onnx_sha256": onnx_digest(model_dir, onnx_manifest["graphs"][name]),
                "build_seconds": round(seconds, 3),
            }
            log(f"built {path.name} ({graphs[name]['plan']['bytes']:,} bytes, {seconds:.2f} s)")
        cache_info = cache.save()
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "engine",
            "model": onnx_manifest["model"],
            "source": onnx_manifest.get("source"),
            "precision": onnx_manifest.get("precision", "fp32"),
            "layout": onnx_manifest.get("layout", "growing"),
            "onnx": {"dir": str(model_dir.resolve()), "tools": onnx_manifest.get("tools")},
            "engine": {
                "flavor": fl.name,
                "version": fl.version(trt),
                **targets,
                "gpu": gpu,
                "version_compatible": version_compatible,
                "max_batch": max_batch,
                "builder_optimization_level": graph_config.builder_optimization_level,
                "timing_cache": cache_info if fl.timing_cache else
                f"not used: {fl.title}'s timing cache calls are no-ops",
                "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
            "graphs": graphs,
        }
        for final, tmp in staged.items():
            os.replace(tmp, final)
        write_manifest(out_dir, manifest)
    except BaseException:  # a failed build leaves no temporary plans behind
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    return manifest
