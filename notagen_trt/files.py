"""File writing and hashing shared by every stage: output folders are checked before the work
starts, artefacts appear whole or not at all, a failed write is one line naming the file and the
fix, and a stage never silently replaces another stage's (or the user's) files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from notagen_trt.errors import NotaGenError

OUT_FIX = "choose another --out"
# Scratch folders and staged files carry the pid of the run that made them, so a later run can
# tell a killed run's leftovers (pid gone) from a run still going.
STAGING_PREFIXES = (".export-", ".quantize-", ".build-")
_PID = re.compile(r"-(\d+)-[a-z0-9_]+(?:\.tmp)?$")
LEGACY_STALE_SECONDS = 3600.0  # leftovers without a pid in their name: stale after an hour
REUSED_PID_SECONDS = 86400.0  # a pid alive a day later is another process (containers reuse pids)


def write_error(path: str | Path, exc: OSError, fix: str = OUT_FIX) -> NotaGenError:
    """One line for a failed write: the file, the system's reason and what to do."""
    hint = {errno.ENOSPC: f"free some disk space or {fix}", errno.EDQUOT: f"free some quota or {fix}",
            errno.EROFS: f"the file system is read-only: {fix}", errno.EACCES: f"no permission to write there: {fix}",
            errno.EPERM: f"no permission to write there: {fix}"}.get(exc.errno, fix)
    return NotaGenError(f"{exc.filename or path}: could not write ({exc.strerror or exc}); {hint}")


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that no stage turned into a NotaGenError."""
    hint = {errno.ENOSPC: "free some disk space", errno.EROFS: "the file system is read-only",
            errno.EACCES: "check the permissions", errno.EPERM: "check the permissions"}.get(exc.errno, "check the path")
    return f"{exc.filename or 'a file'}: {exc.strerror or exc}; {hint}"


@contextlib.contextmanager
def writing(path: str | Path, fix: str = OUT_FIX) -> Iterator[None]:
    """Turn an OSError raised while writing under ``path`` into one NotaGenError line."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc, fix) from None


FULL_BELOW = 1 << 20  # a disk with less free space than this after a failure ran out of it


def require_free_space(path: Path, need: int, stage: str, fix: str = OUT_FIX) -> None:
    """Refuse before the work when ``path``'s file system cannot hold what the stage will write."""
    free = shutil.disk_usage(path).free
    if free < need:
        raise NotaGenError(f"{path}: notagen-trt {stage} needs about {need / 1e6:,.1f} MB free here, the disk has "
                           f"{free / 1e6:,.1f} MB; free some disk space or {fix}")


@contextlib.contextmanager
def out_of_space_is_one_line(path: Path, fix: str = OUT_FIX) -> Iterator[None]:
    """Libraries that write files (ONNX Runtime's quantizer, the ONNX exporter) can fail on a full
    disk with unrelated messages (a truncated file read back): say what happened instead."""
    try:
        yield
    except NotaGenError:
        raise
    except Exception as exc:
        try:
            full = shutil.disk_usage(path).free < FULL_BELOW
        except OSError:
            full = False
        if not full:
            raise
        raise NotaGenError(f"{path}: the disk ran out of space while writing ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); free some disk space or {fix}") from None


def staging_prefix(kind: str) -> str:
    return f".{kind}-{os.getpid()}-"


def stage(path: Path, data: str | bytes | memoryview) -> Path:
    """Write ``data`` to a temporary file beside ``path`` (synced, mode 0644) and return it; the
    caller renames it into place, alone (``write_atomic``) or with others once all are ready."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-{os.getpid()}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return Path(tmp)


def write_atomic(path: Path, data: str | bytes | memoryview) -> None:
    """Readers see the old file or the new one, never half of one."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage(path, data)
    try:
        with writing(path):
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHED: dict[tuple, str] = {}


def _version(path: str | Path) -> tuple:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def sha256_cached(path: str | Path) -> str:
    """sha256_file, computed once per process for each version (inode, size, mtime) of a file."""
    key = _version(path)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def sha256_all(paths: Iterable[str | Path]) -> None:
    """sha256_cached of every file in ``paths`` not hashed yet, side by side: hashlib lets go of
    the GIL, so a model directory's graphs (0.5 GB for NotaGen-small int8-wo) hash on every core."""
    todo = [p for p in paths if _version(p) not in _HASHED]
    if todo:
        with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1), thread_name_prefix="notagen-sha256") as pool:
            list(pool.map(sha256_cached, todo))


# ---------------------------------------------------------------- output folders

def prepare_out_dir(path: str | Path, stage: str, fix: str = OUT_FIX) -> Path:
    """Create the output folder of ``notagen-trt STAGE`` and check that it is a folder this process
    can write, before any work starts; remove leftovers of killed runs in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotaGenError(f"{path}: is a file, but notagen-trt {stage} writes a folder of files there; {fix}")
    try:
        _MADE_HERE.extend(f for f in (path, *path.parents) if not f.exists())  # innermost first
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as exc:
        raise NotaGenError(f"{path}: cannot write to this folder ({exc.strerror or exc}); {fix}") from None
    clean_stale_staging(path)
    return path


_MADE_HERE: list[Path] = []  # folders prepare_out_dir created, each before the one holding it


def settle_out_dirs(failed: bool) -> None:
    """At the end of a command: if it failed, the output folders it created and left empty go
    again (a failed export or quantize leaves no empty model folder behind; one with anything in
    it stays)."""
    for path in _MADE_HERE if failed else ():
        with contextlib.suppress(OSError):
            path.rmdir()  # only an empty folder
    _MADE_HERE.clear()


def check_out_file(path: str | Path, flag: str) -> Path:
    """Check before the work that ``flag``'s file can be written: its folder exists and takes a
    file (a read-only mount or a missing folder would otherwise lose a whole run's results)."""
    path = Path(path)
    if path.is_dir():
        raise NotaGenError(f"{path}: is a folder; {flag} takes a file name")
    folder = path.parent
    if not folder.is_dir():
        raise NotaGenError(f"{path}: the folder {folder} does not exist; create it or choose another {flag}")
    if path.exists():  # an existing file (or /dev/null) is written in place: its own permission counts
        if not os.access(path, os.W_OK):
            raise NotaGenError(f"{path}: cannot write to this file; choose another {flag}")
        return path
    try:
        _probe(folder)
    except OSError as exc:
        raise NotaGenError(f"{path}: cannot write to {folder} ({exc.strerror or exc}); choose another {flag}") from None
    return path


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: the only test that sees read-only mounts and ACLs
    (root passes access()); raises OSError."""
    fd, probe = tempfile.mkstemp(prefix=f".write-test-{os.getpid()}-", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def is_stale(entry: Path, now: float | None = None) -> bool:
    """A scratch folder or staged file left by a killed run (see STAGING_PREFIXES)."""
    name = entry.name
    if not (name.startswith(STAGING_PREFIXES) or (name.startswith(".") and name.endswith(".tmp"))):
        return False
    try:
        age = (now or time.time()) - entry.lstat().st_mtime
    except OSError:
        return False
    match = _PID.search(name)
    if match is None:
        return age > LEGACY_STALE_SECONDS
    pid = int(match.group(1))
    return pid != os.getpid() and (not _pid_alive(pid) or age > REUSED_PID_SECONDS)


def clean_stale_staging(folder: Path) -> list[str]:
    """Remove killed runs' scratch folders and staged files from ``folder``; return their names."""
    removed = []
    for entry in folder.iterdir():
        if is_stale(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


@dataclass
class Claim:
    """An output folder a stage may write: ``stale`` lists the previous output's entries, removed
    by ``finish`` once the new output is complete unless the new output rewrote them."""

    path: Path
    stale: list[str] = field(default_factory=list)

    def finish(self, written: Iterable[str]) -> None:
        keep = set(written)
        for name in self.stale:
            if name in keep:
                continue
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


def _manifest_of(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# Graph entries' keys that name files in a model directory, in the order a writer moves them in
# (weights before the graphs that point at them). ``cpu_file``: the form of the graph ONNX Runtime
# runs on a CPU (and on CUDA in fp16), where it differs (the engine-ready graphs: export/engine_graphs.py).
GRAPH_FILE_KEYS = ("external_data", "cpu_external_data", "cpu_file", "file")


def _listed_files(manifest: dict) -> set[str]:
    graphs = manifest.get("graphs")
    names = {"manifest.json"}
    for graph in graphs.values() if isinstance(graphs, dict) else ():
        if isinstance(graph, dict):
            names.update(v for k in GRAPH_FILE_KEYS if isinstance(v := graph.get(k), str))
    return names


def _describe(folder: Path, manifest: dict | None, foreign: list[str]) -> str:
    if manifest is not None and (manifest.get("kind"), manifest.get("precision")) != (None, None):
        # fp32, fp16, int8-wo, int8: each read aloud with "an"
        return f"holds an {manifest.get('precision')} {manifest.get('kind')} directory (see its manifest.json)"
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return f"holds files this stage did not write ({shown})"


def claim_out_dir(path: str | Path, stage: str, kind: str, precision: str, force: bool = False) -> Claim:
    """May ``notagen-trt STAGE`` write its ``kind`` / ``precision`` model directory into ``path``?
    Yes when it is empty or holds the same stage's earlier output (replaced, stale files removed
    at the end); otherwise a NotaGenError, unless ``force``, which replaces everything in it."""
    path = Path(path)
    entries = sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else []
    if not entries:
        return Claim(path)
    manifest = _manifest_of(path)
    same = manifest is not None and (manifest.get("kind"), manifest.get("precision")) == (kind, precision)
    foreign = [n for n in entries if not (same and n in _listed_files(manifest))]
    if not foreign:
        return Claim(path, entries)
    if not force:
        clearable = _clearable(path)  # never offer --force where it would be refused
        raise NotaGenError(f"{path}: {_describe(path, manifest if not same else None, foreign)}; {OUT_FIX}"
                           + (", or pass --force to replace everything in it" if clearable else " (a new folder)"))
    _refuse_to_clear(path)
    return Claim(path, entries)


def _clearable(path: Path) -> bool:
    """--force empties a folder: never the home folder, the current one or a folder above it."""
    target = path.resolve()
    return not any(target == keep or keep.is_relative_to(target)
                   for keep in (Path.home().resolve(), Path.cwd().resolve(), Path(target.anchor)))


def _refuse_to_clear(path: Path) -> None:
    if not _clearable(path):
        raise NotaGenError(f"{path}: refusing to replace everything in the home folder, the current folder "
                           f"or a folder above them; {OUT_FIX} (a new folder)")


def prepare_engine_out(path: str | Path, model_dir: str | Path | None, force: bool = False) -> Claim:
    """`notagen-trt build`'s check before any work: ``path`` is a writable folder that is empty or
    holds an earlier engine of the ONNX model's precision (the demo model's, fp32, when None)."""
    precision = (_manifest_of(Path(model_dir)) or {}).get("precision", "fp32") if model_dir else "fp32"
    return claim_out_dir(prepare_out_dir(path, "build"), "build", "engine", precision, force)


def refuse_model_dir(path: str | Path, stage: str) -> None:
    """Generated pieces never go into a model or engine directory."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        raise NotaGenError(f"{path}: is a model or engine directory (it has a manifest.json); notagen-trt {stage} "
                           f"writes pieces into a folder of their own: {OUT_FIX}")
