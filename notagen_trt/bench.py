"""Per-patch latency of every backend and precision against the published algorithm, in one run,
through the production engine (``runtime.engine``: the scheduler and executors `generate` and
the service use).

Each row is measured in its own subprocess (so peak host RSS and GPU memory are its own): the
row's backend gets an engine with ``batch`` rows, every row a piece continuing a context of N
patches, and each engine step (one patch for every row, the published rules applied) is timed;
the median over ``--patches`` steps is reported. The published algorithm (PyTorch, no KV cache,
numpy sampling per character) runs in the same invocation on the same model, beside the
weight-bandwidth floor of the device. An in-flight row instead sends K pieces of different
lengths, from the start as `generate` writes them, through the rows and reports the wall-clock
pieces per minute.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from notagen_trt import allocator
from notagen_trt.config import PATCH_SIZE, PRESETS, ModelConfig
from notagen_trt.runtime import codec
from notagen_trt.runtime.cores import usable_cores
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.piece import GenerationConfig

TORCH_BACKENDS = ("torch-published", "torch-cached", "fast")
ORT_BACKENDS = ("ort-cpu", "ort-cuda")
BACKENDS = ("ort-cpu", "ort-cuda", "torch-cached", "fast")


@dataclass
class Row:
    backend: str
    precision: str
    batch: int
    context: int
    ms_per_patch_median: float
    ms_per_patch_p90: float
    pieces_per_minute: float
    peak_rss_mb: float
    peak_gpu_mb: float | None  # allocator peak: what the backend itself holds on the GPU
    gpu_process_mb: float | None  # the driver's view of the process: + CUDA context, libraries
    device: str
    executor: str = ""
    lanes: int = 1  # threads stepping the rows at once (Engine: an executor's lanes)
    inflight_pieces: int | None = None  # in-flight rows: pieces sent through the rows
    inflight_seconds: float | None = None
    inflight_steps: int | None = None  # engine steps the in-flight pieces took
    inflight_row_use: float | None = None  # share of row-steps that carried a piece (the tail leaves rows idle)
    inflight_outside_steps_s: float | None = None  # wall seconds outside steps: admission, context loads


def context_text(n: int) -> str:
    """A training-format text that encodes to exactly ``n`` full patches (header, then bar
    lines of one patch each): the context every timed piece continues."""
    header = "X:1\nL:1/8\nM:4/4\nK:C\n"
    rng = np.random.default_rng(0)
    notes = "CDEFGABcdefgab"
    lines = ["[V:1]" + "".join(rng.choice(list(notes), 9)) + "|\n" for _ in range(max(0, n - 5))]
    text = header + "".join(lines)  # bos + 4 header patches + one patch a line
    assert len(codec.encode_generate(text)[0]) == max(n, 5), "context_text lines must be one patch each"
    return text


def _requests(spec: dict, count: int, max_patches: int) -> list[PieceRequest]:
    """``count`` pieces continuing the context, each stopped after ``max_patches`` (sampled EOS
    patches end random-weight pieces early at times; the waiting pieces keep every row busy)."""
    text = context_text(spec["context"])
    return [PieceRequest(None, GenerationConfig(seed=i, max_patches=max_patches), text) for i in range(count)]


def _time_steps(engine: Engine, spec: dict) -> list[float]:
    """Per-step seconds of the engine with all rows busy (pieces queued behind them)."""
    times: list[float] = []
    # A step of a widest lane with every row busy: the lanes step at once (see Engine), so the
    # widest one's step is how long each row takes a patch (more rows than cores: lanes of unequal width).
    widest = max(engine.lane_rows)
    engine.on_step.append(lambda seconds, rows, lane_rows: times.append(seconds) if rows == lane_rows == widest else None)
    want = spec["warmup"] + spec["patches"]
    for _ in engine.run(_requests(spec, 4 * engine.executor.rows, want + 2)):
        if len(times) >= want:
            break
    return times[spec["warmup"] : want]


def _time_inflight(engine: Engine, spec: dict) -> tuple[float, int, list[tuple[float, int, int]]]:
    """(seconds, pieces, [(step seconds, rows stepped, rows of the lane)]): K unconditional pieces, each stopped at
    a length drawn in [lo, hi] patches (or earlier at a sampled EOS), sent through the rows as
    `generate` sends them."""
    rng = np.random.default_rng(1)
    lo, hi = spec["inflight_patches"]
    requests = [PieceRequest(None, GenerationConfig(seed=i, max_patches=int(n)))
                for i, n in enumerate(rng.integers(lo, hi + 1, spec["inflight"]))]
    engine.generate([PieceRequest(None, GenerationConfig(seed=10**6, max_patches=spec["warmup"] + 1))])  # capture
    steps: list[tuple[float, int, int]] = []
    engine.on_step.append(lambda seconds, rows, lane_rows: steps.append((seconds, rows, lane_rows)))
    start = time.perf_counter()
    done = len(engine.generate(requests))
    return time.perf_counter() - start, done, steps


def _backend(spec: dict, config: ModelConfig):
    """The row's backend object, built the way `generate` builds it (random weights for torch)."""
    backend, precision = spec["backend"], spec["precision"]
    if backend in TORCH_BACKENDS:
        import torch

        from notagen_trt.export.model import NotaGenModel

        torch.manual_seed(0)
        model = NotaGenModel(config).eval()
        device = spec.get("torch_device", "cpu")
        if backend == "fast":
            from notagen_trt.fastpath.executor import FastBackend

            return FastBackend(model, device, precision)
        from notagen_trt.export.reference import ReferenceBackend

        dtype = torch.float16 if precision == "fp16" else torch.float32
        return ReferenceBackend(model.to(dtype), backend.split("-")[1], device)
    from notagen_trt.runtime.onnx_backend import AUTO, OrtBackend

    # generate's threading (runtime/engine.py load_engine): one intra-op thread per call and
    # several rows side by side, or every row in one call on every core where its ops split well.
    return OrtBackend(spec["model_dir"], "cuda" if backend == "ort-cuda" else "cpu", threads=AUTO)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; ru_maxrss would carry
    the parent's peak into the measuring subprocess."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_mb() -> float | None:
    """This process's GPU memory as the driver sees it (includes the CUDA context)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                return proc.usedGpuMemory / 2**20
        return 0.0
    except Exception:  # no NVIDIA driver / pynvml: nothing to report
        return None


def _device_name(gpu: bool) -> str:
    if gpu:
        try:
            import pynvml

            pynvml.nvmlInit()
            return pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:
            return "GPU (name unavailable)"
    return f"CPU ({usable_cores()} of {os.cpu_count()} cores usable)"


# The CPU features that decide which ONNX Runtime kernels run (int8 and fp16 paths above all).
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict:
    """This machine's CPU model, core count and kernel-relevant flags (Linux), and the memory
    allocator the process runs on, so figures from different machines are never read as one."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return {"model": model, "cores": os.cpu_count(), "usable_cores": usable_cores(),
            "flags": [f for f in CPU_FLAGS if f in flags], "allocator": allocator.current()}


def measure_one(spec: dict) -> dict:
    """Run in a subprocess: build one backend's engine, time it, return a Row as a dict."""
    backend, batch, context = spec["backend"], spec["batch"], spec["context"]
    config = ModelConfig.from_dict(spec["config"])
    gpu = backend == "ort-cuda" or (backend in TORCH_BACKENDS and spec.get("torch_device") == "cuda")
    with Engine(_backend(spec, config).executor(batch)) as engine:
        name = engine.executor.name
        if spec.get("inflight"):
            seconds, pieces, steps = _time_inflight(engine, spec)
            times = [t for t, _, _ in steps] or [seconds]
        else:
            times = _time_steps(engine, spec)
        lanes = len(engine.lane_rows)
    process_gpu = _gpu_mb() if gpu else None
    if gpu and backend in TORCH_BACKENDS:
        import torch

        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_gpu = process_gpu
    ms = [1000 * t for t in times]
    median = statistics.median(ms)
    per_minute = (pieces * 60 / seconds if spec.get("inflight")
                  else batch * 60_000 / (median * spec["patches_per_piece"]))
    return asdict(Row(backend=backend, precision=spec["precision"], batch=batch, context=context,
                      ms_per_patch_median=round(median, 3),
                      ms_per_patch_p90=round(float(np.percentile(ms, 90)), 3),
                      pieces_per_minute=round(per_minute, 2),
                      peak_rss_mb=round(_peak_rss_mb(), 1),
                      peak_gpu_mb=None if not gpu else round(peak_gpu or 0.0, 1),
                      gpu_process_mb=None if process_gpu is None else round(process_gpu, 1),
                      device=_device_name(gpu), executor=name, lanes=lanes,
                      inflight_pieces=pieces if spec.get("inflight") else None,
                      inflight_seconds=round(seconds, 3) if spec.get("inflight") else None,
                      **(_inflight_use(steps, seconds, lanes) if spec.get("inflight") else {})))


def _inflight_use(steps: list[tuple[float, int, int]], seconds: float, lanes: int) -> dict:
    """Row use over every step of every lane; the time outside steps per lane (lanes step at once)."""
    return {"inflight_steps": len(steps),
            "inflight_row_use": round(sum(r for _, r, _ in steps) / max(1, sum(n for _, _, n in steps)), 3),
            "inflight_outside_steps_s": round(seconds - sum(t for t, _, _ in steps) / lanes, 3)}


def bandwidth_floor_ms(config: ModelConfig, bytes_per_weight: float, gb_per_s: float) -> float:
    """Reading the patch-level weights once and the char-level weights 16 times per patch."""
    patch, char = config.num_parameters()
    return (patch + PATCH_SIZE * char) * bytes_per_weight / (gb_per_s * 1e9) * 1e3


def measure_copy_bandwidth_gb_s() -> float | None:
    """Device-to-device copy bandwidth measured here (read + write of 1 GiB), or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
        y = torch.empty_like(x)
        y.copy_(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        torch.cuda.synchronize()
        return 2 * 10 * 2**30 / (time.perf_counter() - t0) / 1e9
    except Exception:
        return None


def run_subprocess(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "notagen_trt.bench", json.dumps(spec)], capture_output=True,
                          text=True, env={**os.environ})
    if proc.returncode != 0:
        return {"backend": spec["backend"], "precision": spec["precision"], "batch": spec["batch"],
                "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def config_for(size: str) -> ModelConfig:
    if size == "demo":
        from notagen_trt.demo import demo_checkpoint
        from notagen_trt.export.checkpoint import load_model

        return load_model(demo_checkpoint()).config
    return PRESETS[size]


if __name__ == "__main__":
    print(json.dumps(measure_one(json.loads(sys.argv[1]))))
