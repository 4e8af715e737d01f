"""The demo model that ships with the toolkit: the default of every command that takes a model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from notagen_trt.errors import NotaGenError
from notagen_trt.files import prepare_out_dir, writing

CACHE_FIX = "set XDG_CACHE_HOME to a writable folder, or pass an exported --model DIR"
# Exports of one checkpoint kept in the cache: each toolkit version (or exporter change) makes its
# own, so upgrades would pile them up; the least recently used beyond these are removed.
KEEP_EXPORTS = 3

DEMO_CHECKPOINT = Path(__file__).parent / "data" / "demo.pth"


def demo_checkpoint() -> Path:
    if not DEMO_CHECKPOINT.is_file():
        raise NotaGenError(
            f"{DEMO_CHECKPOINT}: the demo model is missing from this install; reinstall the package "
            "or pass --checkpoint"
        )
    return DEMO_CHECKPOINT


def demo_model_dir() -> Path:
    """The demo checkpoint exported to ONNX once, in the user cache."""
    return exported_dir(demo_checkpoint())


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "notagen-trt"


DIGEST = 12  # hex digits of an export's key in its cache folder's name, NAME-<key>


def checkpoint_name(checkpoint: Path) -> str:
    """The name a checkpoint goes by: "demo" for the demo model, else its file's stem."""
    return "demo" if checkpoint.resolve() == DEMO_CHECKPOINT.resolve() else checkpoint.stem[:40]


def cached_export_name(folder: Path) -> str | None:
    """The checkpoint name of an export in the user cache (a folder NAME-<key> there), else None."""
    stem, _, key = folder.name.rpartition("-")
    if folder.parent.resolve() != _cache_root().resolve() or len(key) != DIGEST:
        return None
    return stem if stem and all(c in "0123456789abcdef" for c in key) else None


def exported_dir(checkpoint: Path) -> Path:
    """A checkpoint exported to ONNX once, in the user cache, keyed by its hash."""
    # Keyed by the weights, the toolkit version and the exporter's source, so an upgrade, or a
    # change to how graphs are traced, re-exports instead of reusing stale graphs.
    from notagen_trt import __version__, export
    from notagen_trt.manifest import FORMAT_VERSION

    exporter = Path(export.__file__).parent
    key = checkpoint.read_bytes() + f"{__version__}/{FORMAT_VERSION}".encode() + b"".join(
        (exporter / name).read_bytes() for name in ("model.py", "onnx_export.py", "trace_ops.py", "engine_graphs.py"))
    cache = _cache_root() / f"{checkpoint_name(checkpoint)}-{hashlib.sha256(key).hexdigest()[:DIGEST]}"
    damage = _cache_damage(cache)
    if damage is None:
        _mark_used(cache)
        return cache
    try:
        from notagen_trt.export.checkpoint import load_model
        from notagen_trt.export.onnx_export import export_onnx
    except ImportError:
        raise NotaGenError(
            f"{checkpoint}: a checkpoint must be exported to ONNX once for this backend, which needs torch: "
            "pip install 'notagen-trt[export]', or pass an exported --model DIR"
        ) from None
    model = load_model(checkpoint)  # first: a file that is no checkpoint leaves no cache folder behind
    prepare_out_dir(cache, "export", fix=CACHE_FIX)
    print(f"{cache}: {damage}; rebuilding it" if damage else f"exporting {checkpoint.name} to {cache} (once)",
          file=sys.stderr)
    with writing(cache, fix=CACHE_FIX):
        # The engine-ready graphs too: ONNX Runtime runs rows batched on them (runtime/graph_executor.py).
        export_onnx(model, cache, checkpoint_path=checkpoint, force=True, layout="engine")
    _mark_used(cache)
    _prune(cache)
    return cache


def _mark_used(cache: Path) -> None:
    """The folder's modification time says when an export was last used (best effort: a cache on
    a read-only mount still serves)."""
    try:
        os.utime(cache)
    except OSError:
        pass


def _prune(cache: Path) -> None:
    """Remove the least recently used exports of the same checkpoint (the same weights, by their
    sha256 in the manifest) beyond KEEP_EXPORTS; two installs of different versions sharing a
    cache keep one each. Best effort: another process may be pruning or exporting too."""
    name = cached_export_name(cache)
    source = _source_sha256(cache)

    def same_checkpoint(p: Path) -> bool:  # another export of these weights
        return p != cache and cached_export_name(p) == name and source is not None and _source_sha256(p) == source

    try:
        siblings = sorted(((p.stat().st_mtime, p) for p in cache.parent.glob(f"{name}-*") if same_checkpoint(p)),
                          reverse=True)
    except OSError:
        return
    for _, old in siblings[KEEP_EXPORTS - 1:]:
        shutil.rmtree(old, ignore_errors=True)
        if not old.exists():
            print(f"removed {old}: an older export of {name} (the cache keeps {KEEP_EXPORTS})", file=sys.stderr)


def _source_sha256(folder: Path) -> str | None:
    """The sha256 of the checkpoint an export was made from (its manifest), or None."""
    try:
        return json.loads((folder / "manifest.json").read_text()).get("source", {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _cache_damage(cache: Path) -> str | None:
    """None when the cached export is whole; '' when there is none; else what is wrong with it
    (an edited manifest, a truncated or swapped graph: the manifest's checksums say)."""
    from notagen_trt.manifest import read_manifest

    if not (cache / "manifest.json").is_file():
        return ""
    try:
        read_manifest(cache, expect_kind="onnx")
    except NotaGenError as exc:
        return f"the cached export is damaged ({exc})"
    return None
