"""File writing and hashing shared by every stage: artefacts appear whole or not at all."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def stage(path: Path, data: str | bytes | memoryview) -> Path:
    """Write ``data`` to a temporary file beside ``path`` (synced, mode 0644) and return it; the
    caller renames it into place, alone (``write_atomic``) or with others once all are ready."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stage(path, data), path)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
