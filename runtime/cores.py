"""The cores this process may use: the CPUs it is pinned to (taskset, cpusets) and its container's
CPU quota (Docker's --cpus, Kubernetes limits), not the host's count. A 2-CPU container on a
64-core host that ran 64 ONNX Runtime threads would spend most of each patch throttled."""

from __future__ import annotations

import functools
import os


@functools.cache
def usable_cores() -> int:
    """The minimum of the host's CPUs, this process's affinity, its cgroup CPU quota (rounded up)
    and LOKY_MAX_CPU_COUNT where set, as joblib's loky counts them; at least 1. Read once per
    process. (loky's count, not ``joblib.cpu_count``, which says 1 wherever joblib itself cannot
    use multiprocessing, such as a container without /dev/shm.)"""
    try:
        from joblib.externals.loky import cpu_count
    except ImportError:  # an install without joblib (pip install 'notagen-trt[ort]' brings it): affinity only
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpu_count())
