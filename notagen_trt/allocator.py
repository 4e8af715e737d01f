"""The process's memory allocator: jemalloc where the machine has it (Linux).

ONNX Runtime's CPU kernels allocate and free small buffers in every node of every call, and a
demo patch runs about 800 nodes: under glibc's malloc a tenth of a CPU patch went to malloc and
free (perf, 2-core Xeon). jemalloc (Debian's ``libjemalloc2``) makes those calls cheap; an
allocator can only be chosen before a process starts, so the ``notagen-trt`` command restarts
itself once with jemalloc preloaded, as PyTorch's CPU launcher (``torch.backends.xeon.run_cpu``)
does. ``NOTAGEN_TRT_MALLOC`` picks another: ``system`` (glibc's), ``tcmalloc``, ``mimalloc`` or
the path of a library. Child processes (bench's rows, a service's workers) inherit the choice.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

ENV = "NOTAGEN_TRT_MALLOC"
KNOWN = ("jemalloc", "tcmalloc", "mimalloc")
# The libraries' names (ctypes.util.find_library) and their Debian packages.
_NAMES = {"jemalloc": ("jemalloc",), "tcmalloc": ("tcmalloc", "tcmalloc_minimal"), "mimalloc": ("mimalloc",)}
_DEBIAN = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4", "mimalloc": "libmimalloc2.0"}


def library_to_preload(environ: Mapping[str, str], platform: str = sys.platform,
                       find: Callable[[str], str | None] = ctypes.util.find_library) -> str | None:
    """The library this process should restart with preloaded, or None: not on Linux, asked not
    to (``system``), preloaded already, or no jemalloc on the machine (the default). ValueError,
    saying why, for a setting that names nothing to load."""
    choice = environ.get(ENV, "")
    if not platform.startswith("linux") or choice == "system":
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in KNOWN) or (choice and choice in preloaded):
        return None  # by the restart, or by the user
    if not choice:
        return find("jemalloc")
    if choice in KNOWN:
        library = next(filter(None, map(find, _NAMES[choice])), None)
        if library is None:
            raise ValueError(f"{ENV}={choice}: no {choice} library on this machine (Debian: apt install "
                             f"{_DEBIAN[choice]})")
        return library
    if "/" not in choice or not os.path.isfile(choice):
        raise ValueError(f"{ENV}={choice}: not a file; set system, {', '.join(KNOWN)} or a library's path")
    return choice


def restart_with_preferred(environ: Mapping[str, str] | None = None) -> None:
    """Replace this process by itself with the preferred allocator preloaded (no return), when
    ``library_to_preload`` names one; else return. Call first thing, before any thread starts."""
    environ = os.environ if environ is None else environ
    try:
        library = library_to_preload(environ)
    except ValueError as exc:
        print(f"notagen-trt: warning: {exc}; running on the system allocator", file=sys.stderr)
        return
    if library is None:
        return
    env = dict(environ)
    # After what the user preloads: a library that must come first (a sanitizer's runtime) stays first.
    env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD", ""), library]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def current() -> str:
    """The allocator this process runs on: jemalloc, tcmalloc or mimalloc where one is mapped,
    else the C library's (``system``)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return next((name for name in KNOWN if f"lib{name}" in maps), "system")
