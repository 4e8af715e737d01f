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
    return {"jemalloc": "libjemalloc.so.2"}.get(name)


def test_library_to_preload_follows_the_setting_and_never_loops():
    assert library_to_preload({}, "linux", _find) == "libjemalloc.so.2"
    assert library_to_preload({}, "linux", lambda name: None) is None  # none on the machine
    assert library_to_preload({ENV: "system"}, "linux", _find) is None
    assert library_to_preload({}, "darwin", _find) is None
    assert library_to_preload({ENV: "/opt/lib/libmimalloc.so"}, "linux", _find) == "/opt/lib/libmimalloc.so"
    # Preloaded already (by the restart, or the user's own choice): no second restart.
    assert library_to_preload({"LD_PRELOAD": "libjemalloc.so.2"}, "linux", _find) is None
    assert library_to_preload({"LD_PRELOAD": "/x/libtcmalloc_minimal.so.4"}, "linux", _find) is None
    assert library_to_preload({ENV: "/opt/libother.so", "LD_PRELOAD": "/opt/libother.so"}, "linux", _find) is None


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


def test_a_missing_library_is_one_line_and_the_system_allocator():
    done = subprocess.run([sys.executable, "-c", _SHOW], env=_env(**{ENV: "/nonexistent/libjemalloc.so"}),
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "system"
    assert f"{ENV}=/nonexistent/libjemalloc.so is not a file" in done.stderr


@needs_jemalloc
def test_the_command_runs_on_jemalloc_and_says_so(tmp_path):
    exe = shutil.which("notagen-trt", path=str(Path(sys.executable).parent)) or "notagen-trt"
    args = [exe, "generate", "--max-patches", "2", "--formats", "abc", "--json"]
    for env, want in ((_env(), "jemalloc"), (_env(**{ENV: "system"}), "system")):
        done = subprocess.run([*args, "--out", str(tmp_path / want)], env=env, capture_output=True, text=True,
                              timeout=300, check=True)
        assert json.loads(done.stdout)["allocator"] == want
