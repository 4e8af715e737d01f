"""The engine directory's manifest (kind "engine") and the checks that refuse an engine which
cannot run here, each as one line naming the file and the mismatch.

An engine manifest is the ONNX manifest it was built from (model config, precision, source
checkpoint, graph IO) plus, per plan: size and sha256 of the plan, sha256 of the ONNX it came
from, the optimization profiles and the build time; and for the whole directory: the flavour and
its version, target compute capabilities, the build GPU where there was one, the timing cache.
No torch, onnx or TensorRT imports: the runtime reads this before it loads anything heavy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notagen_trt.errors import NotaGenError
from notagen_trt.files import sha256_file
from notagen_trt.manifest import GraphIO, graph_file, layout_graphs, read_manifest


def onnx_digest(model_dir: str | Path, graph: dict[str, Any]) -> str:
    """sha256 of a graph's ONNX file, followed by its external weights when it has them."""
    digest = hashlib.sha256()
    for key in ("file", "external_data"):
        if graph.get(key):
            digest.update(bytes.fromhex(sha256_file(Path(model_dir) / graph[key])))
    return digest.hexdigest()


@dataclass(frozen=True)
class RuntimeInfo:
    """What is here to run an engine: flavour, its version, and the GPU (None where there is none)."""

    flavor: str
    version: str
    gpu_name: str | None
    compute_capability: str | None


def check_plans(engine_dir: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest, once every plan has the size and sha256 recorded at build time (a truncated,
    padded or altered plan is refused before TensorRT sees it)."""
    engine_dir = Path(engine_dir)
    manifest = manifest or read_manifest(engine_dir, expect_kind="engine")
    for name in layout_graphs(manifest):
        path = graph_file(engine_dir, manifest, name)
        plan = manifest["graphs"][name].get("plan") or {}
        size = path.stat().st_size
        if size != plan.get("bytes"):
            what = "truncated" if isinstance(plan.get("bytes"), int) and size < plan["bytes"] else "the wrong size"
            raise NotaGenError(f"{path}: plan is {what} ({size} bytes, the build wrote {plan.get('bytes')}); "
                               f"rebuild it with `notagen-trt build`")
        if sha256_file(path) != plan.get("sha256"):
            raise NotaGenError(f"{path}: plan is corrupt (sha256 differs from the one recorded at build time); "
                               f"rebuild it with `notagen-trt build`")
    return manifest


def check_runtime(engine_dir: str | Path, manifest: dict[str, Any], here: RuntimeInfo) -> None:
    """Refuse an engine built for another flavour, TensorRT version, GPU or compute capability."""
    engine = manifest["engine"]
    path = Path(engine_dir) / "manifest.json"
    if engine["flavor"] != here.flavor:
        raise NotaGenError(f"{path}: engine built with flavour {engine['flavor']!r}, this runtime is "
                           f"{here.flavor!r}; rebuild with --flavor {here.flavor} or install the other flavour")
    if not version_accepts(engine["version"], here.version, engine.get("version_compatible", False)):
        compat = " (version-compatible: needs the same major version, same or newer)" \
            if engine.get("version_compatible") else ""
        raise NotaGenError(f"{path}: engine built with {engine['flavor']} {engine['version']}, this is "
                           f"{here.version}{compat}; rebuild it here with `notagen-trt build`")
    if here.compute_capability is None:
        raise NotaGenError(f"{path}: no CUDA GPU is visible to run this engine; use --backend ort-cpu")
    ccs = engine["compute_capabilities"]
    if engine.get("hardware_compatibility") == "ampere+":
        if float(here.compute_capability) < 8.0:
            raise NotaGenError(f"{path}: engine built for Ampere or newer GPUs, this GPU ({here.gpu_name}) has "
                               f"compute capability {here.compute_capability}; rebuild it on this GPU")
    elif here.compute_capability not in ccs:
        raise NotaGenError(f"{path}: engine built for compute capability {', '.join(ccs)}, this GPU "
                           f"({here.gpu_name}) is {here.compute_capability}; rebuild with --compute-capability "
                           f"{here.compute_capability}")
    built_on = (engine.get("gpu") or {}).get("name")
    if engine["flavor"] == "trt" and not engine.get("hardware_compatibility") and built_on and here.gpu_name \
            and built_on != here.gpu_name:
        raise NotaGenError(f"{path}: engine built on {built_on}, this GPU is {here.gpu_name}; full TensorRT engines "
                           f"are tuned per GPU model: rebuild it here (or build with --compute-capability ampere+)")


def version_accepts(built: str, running: str, version_compatible: bool) -> bool:
    """Same version, or with a version-compatible engine the same major and a newer runtime."""
    if built == running:
        return True
    if not version_compatible:
        return False
    b, r = (_numbers(v) for v in (built, running))
    return b[:1] == r[:1] and r >= b


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def check_source(engine_dir: str | Path, manifest: dict[str, Any], onnx_dir: str | Path) -> None:
    """Refuse an engine whose plans were built from other ONNX graphs than those in ``onnx_dir``."""
    onnx_manifest = read_manifest(onnx_dir, expect_kind="onnx")
    for name in layout_graphs(manifest):
        want = onnx_digest(onnx_dir, onnx_manifest["graphs"][name])
        got = manifest["graphs"][name].get("onnx_sha256")
        if got != want:
            raise NotaGenError(f"{graph_file(engine_dir, manifest, name)}: built from another model (ONNX sha256 "
                               f"{str(got)[:12]}…, {Path(onnx_dir) / onnx_manifest['graphs'][name]['file']} is "
                               f"{want[:12]}…); rebuild it from this model with `notagen-trt build`")


def check_engine(engine_dir: str | Path, here: RuntimeInfo | Callable[[str], RuntimeInfo] | None = None,
                 onnx_dir: str | Path | None = None) -> dict[str, Any]:
    """The engine manifest, once the plans are intact, built for ``here`` (when given) and from
    the ONNX in ``onnx_dir`` (when given); otherwise a one-line NotaGenError. ``here`` may be a
    probe taking the engine's flavour (the TensorRT backend's): it runs only once the plans passed,
    so a damaged engine is refused before any TensorRT module is loaded."""
    manifest = check_plans(engine_dir)
    if callable(here):
        here = here(manifest["engine"]["flavor"])
    if here is not None:
        check_runtime(engine_dir, manifest, here)
    if onnx_dir is not None:
        check_source(engine_dir, manifest, onnx_dir)
    return manifest


def engine_io_mismatch(engine: Any, io: GraphIO) -> str | None:
    """Compare a deserialized ICudaEngine's IO tensors and optimization profiles with a graph's
    manifest entry; return what differs, or None. (Needs a GPU to obtain ``engine``.)"""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    want = [*io.input_names, *io.output_names]
    profiles = io.profiles
    if sorted(names) != sorted(want):
        return f"IO tensors {sorted(names)} differ from the manifest's {sorted(want)}"
    if engine.num_optimization_profiles != len(profiles):
        return f"{engine.num_optimization_profiles} optimization profiles, the manifest lists {len(profiles)}"
    for index, profile in enumerate(profiles):
        for name, shapes in profile["shapes"].items():
            got = [list(s) for s in engine.get_tensor_profile_shape(name, index)]
            if got != shapes:
                return f"profile {index} ({profile['name']}) gives {name} {got}, the manifest says {shapes}"
    return None
