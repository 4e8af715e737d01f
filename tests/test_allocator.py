"""The command restarts itself on jemalloc where the machine has it (notagen_trt/allocator.py)."""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from notagen_trt.allocator import ENV, library_to_preload

JEMALLOC = ctypes.util.find_library("jemalloc")
needs_jemalloc = pytest.mark.skipif(JEMALLOC is None, reason="no jemalloc on this machine (Debian: libjemalloc2)")


def _find(name: str) -> str | None:
    return {"jemalloc": "libjemalloc.so.2", "tcmalloc_minimal": "libtcmalloc_minimal.so.4"}.get(name)


def test_library_to_preload_follows_the_setting_and_never_loops(tmp_path):
    assert library_to_preload({}, "linux", _find) == "libjemalloc.so.2"
    assert library_to_preload({}, "linux", lambda name: None) is None  # none on the machine: glibc's, silently
    assert library_to_preload({ENV: "system"}, "linux", _find) is None
    assert library_to_preload({}, "darwin", _find) is None
    assert library_to_preload({ENV: "tcmalloc"}, "linux", _find) == "libtcmalloc_minimal.so.4"
    lib = tmp_path / "libmine.so"
    lib.write_bytes(b"")
    assert library_to_preload({ENV: str(lib)}, "linux", _find) == str(lib)
    # Preloaded already (by the restart, or the user's own choice): no second restart.
    assert library_to_preload({"LD_PRELOAD": "libjemalloc.so.2"}, "linux", _find) is None
    assert library_to_preload({"LD_PRELOAD": "/x/libtcmalloc_minimal.so.4"}, "linux", _find) is None
    assert library_to_preload({ENV: str(lib), "LD_PRELOAD": str(lib)}, "linux", _find) is None
    # A setting that names nothing to load says so (the command warns and runs on glibc's).
    for setting, why in (("mimalloc", "no mimalloc library on this machine .Debian: apt install libmimalloc2.0"),
                         ("jemallok", "not a file"),
                         (str(tmp_path / "missing.so"), "not a file")):
        with pytest.raises(ValueError, match=why):
            library_to_preload({ENV: setting}, "linux", _find)


_SHOW = "from notagen_trt import allocator; allocator.restart_with_preferred(); print(allocator.current())"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    return {**env, **extra}


@needs_jemalloc
def test_the_process_restarts_on_jemalloc_unless_asked_not_to():
    run = lambda env: subprocess.run([sys.executable, "-c", _SHOW], env=env, capture_output=True, text=True,  # noqa: E731
                                     timeout=60, check=True).stdout.strip()
    assert run(_env()) == "jemalloc"
    assert run(_env(**{ENV: "system"})) == "system"
    # A library the user preloads stays first; jemalloc joins after it.
    libm = ctypes.util.find_library("m")
    show_preload = _SHOW.replace("print(allocator.current())", "import os; print(os.environ['LD_PRELOAD'])")
    done = subprocess.run([sys.executable, "-c", show_preload], env=_env(LD_PRELOAD=libm), capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.split() == [libm, JEMALLOC]


def test_a_missing_library_is_one_line_and_the_system_allocator():
    done = subprocess.run([sys.executable, "-c", _SHOW], env=_env(**{ENV: "/nonexistent/libjemalloc.so"}),
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "system"
    assert f"warning: {ENV}=/nonexistent/libjemalloc.so: not a file" in done.stderr


@needs_jemalloc
def test_the_command_runs_on_jemalloc_and_says_so(tmp_path):
    exe = shutil.which("notagen-trt", path=str(Path(sys.executable).parent)) or "notagen-trt"
    args = [exe, "generate", "--max-patches", "2", "--formats", "abc", "--json"]
    for env, want in ((_env(), "jemalloc"), (_env(**{ENV: "system"}), "system")):
        done = subprocess.run([*args, "--out", str(tmp_path / want)], env=env, capture_output=True, text=True,
                              timeout=300, check=True)
        assert json.loads(done.stdout)["allocator"] == want
