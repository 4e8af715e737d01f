"""The GPU memory a process holds before it holds any model: a bare CUDA context (cuda-python),
and PyTorch's after its first device tensor, each in a fresh process, as the driver reports it
(NVML, the figure `bench` reports as process GPU memory). With ONNX Runtime CUDA's one-node
session (`ort_cuda_memory.py`) this is the floor under any model's figure.

``python benchmarks/cuda_context_memory.py``"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBES = {
    "cuda-python context": "from cuda.core import Device; d = Device(0); d.set_current(); "
                           "b = d.allocate(1 << 20, stream=d.default_stream); d.sync()",
    "torch first tensor": "import torch; x = torch.ones(1, device='cuda'); torch.cuda.synchronize()",
}


def process_mb() -> float:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    return next(p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid()) / 2**20


def main() -> None:
    if len(sys.argv) > 1:  # a probe, in its own process
        exec(PROBES[sys.argv[1]])
        print(process_mb())
        return
    report = {}
    for name in PROBES:
        out = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True)
        report[name] = float(out.stdout.split()[-1]) if out.returncode == 0 else out.stderr.strip().splitlines()[-1]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
