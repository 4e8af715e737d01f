"""Per-patch latency of every backend and precision against the published algorithm, in one run.

Each backend is measured in its own subprocess (so peak host RSS and GPU memory are its own):
prime a context of N patches, then time ``--patches`` generated patches (16 sampled characters
and one patch step each) and report the median. The published algorithm (PyTorch, no KV cache,
numpy sampling per character) and the PyTorch cached path run in the same invocation on the
same model, beside the weight-bandwidth floor of the device.
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

from notagen_trt.config import BOS_ID, PATCH_SIZE, PRESETS, ModelConfig
from notagen_trt.runtime import codec
from notagen_trt.runtime.generate import sample_patch
from notagen_trt.runtime.sampling import SamplingParams, sample

TORCH_BACKENDS = ("torch-published", "torch-cached", "torch-fast")
ORT_BACKENDS = ("ort-cpu", "ort-cuda")


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


def context_patches(n: int, seed: int = 0) -> np.ndarray:
    """N plausible patches (printable ASCII bars ending in eos) for random-weight timing."""
    rng = np.random.default_rng(seed)
    patches = rng.integers(32, 127, size=(n, PATCH_SIZE))
    patches[:, -1] = 2
    patches[0] = [ord(c) for c in codec.BOS_PATCH]
    return patches.astype(np.int64)


def _time_batch(session, contexts: np.ndarray, patches: int, warmup: int, seed: int) -> list[float]:
    """Batched timing through a backend's raw graph runner (every row at the same length)."""
    rng = np.random.default_rng(seed)
    b = contexts.shape[0]
    hidden = session.extend_batch(contexts)
    times = []
    for i in range(warmup + patches):
        t0 = time.perf_counter()
        logits = session.char_start_batch(hidden, np.full((b, 1), BOS_ID, dtype=np.int64))
        out = np.zeros((b, PATCH_SIZE), dtype=np.int64)
        for k in range(PATCH_SIZE):
            out[:, k] = sample(logits, rng.random(b))
            if k < PATCH_SIZE - 1:
                logits = session.char_step_batch(out[:, k])
        hidden = session.extend_batch(np.stack([codec.clean_patch(p) for p in out])[:, None])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _time_fast(gen, context: np.ndarray, patches: int, warmup: int, seed: int) -> list[float]:
    """The fast path: one graph replay and one host sync per patch, every row accepted."""
    import torch

    rng = np.random.default_rng(seed)
    for row in range(gen.batch):
        gen._prefill(row, context)
    times = []
    for i in range(warmup + patches):
        t0 = time.perf_counter()
        gen.uniforms.copy_(torch.from_numpy(rng.random((gen.batch, PATCH_SIZE))))
        gen._replay()
        gen.tokens.cpu()
        gen.position += 1
        gen.hidden.copy_(gen.hidden_next)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _time_single(session, context: np.ndarray, patches: int, warmup: int, seed: int) -> list[float]:
    """One piece's patches through the runtime's own patch loop (generate.sample_patch)."""
    rng = np.random.default_rng(seed)
    hidden = session.extend(context)
    times = []
    for i in range(warmup + patches):
        t0 = time.perf_counter()
        out = sample_patch(session, hidden, [], rng, SamplingParams())
        hidden = session.extend(codec.clean_patch(out)[None])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


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
    return f"CPU ({os.cpu_count()} cores)"


def measure_one(spec: dict) -> dict:
    """Run in a subprocess: build one backend, time it, return a Row as a dict."""
    backend, batch, context = spec["backend"], spec["batch"], spec["context"]
    config = ModelConfig.from_dict(spec["config"])
    gpu = backend == "ort-cuda" or (backend in TORCH_BACKENDS and spec.get("torch_device") == "cuda")
    if backend in TORCH_BACKENDS:
        import torch

        from notagen_trt.export.model import NotaGenModel
        from notagen_trt.export.reference import ReferenceBackend

        torch.manual_seed(0)
        device = spec.get("torch_device", "cpu")
        model = NotaGenModel(config).eval()
        dtype = torch.float16 if spec["precision"] in ("fp16", "int8-wo") else torch.float32
        if backend == "torch-fast":
            from notagen_trt.export.fast import FastGenerator

            weights = "int8" if spec["precision"] == "int8-wo" else "float"
            runner = FastGenerator(model, batch, device, dtype, weights=weights)
        else:
            runner = ReferenceBackend(model.to(dtype), backend.split("-")[1], device)
            session = runner.new_session()
    else:
        from notagen_trt.runtime.onnx_backend import OrtBackend

        runner = OrtBackend(spec["model_dir"], "cuda" if backend == "ort-cuda" else "cpu")
        session = runner.new_session()
    ctx = context_patches(context)
    if backend == "torch-fast":
        times = _time_fast(runner, ctx, spec["patches"], spec["warmup"], 0)
    elif batch == 1:
        times = _time_single(session, ctx, spec["patches"], spec["warmup"], 0)
    else:
        times = _time_batch(session, np.repeat(ctx[None], batch, 0), spec["patches"], spec["warmup"], 0)
    process_gpu = _gpu_mb() if gpu else None
    if gpu and backend in TORCH_BACKENDS:
        import torch

        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_gpu = process_gpu
    ms = [1000 * t for t in times]
    median = statistics.median(ms)
    return asdict(Row(backend=backend, precision=spec["precision"], batch=batch, context=context,
                      ms_per_patch_median=round(median, 3),
                      ms_per_patch_p90=round(float(np.percentile(ms, 90)), 3),
                      pieces_per_minute=round(batch * 60_000 / (median * spec["patches_per_piece"]), 2),
                      peak_rss_mb=round(_peak_rss_mb(), 1),
                      peak_gpu_mb=None if not gpu else round(peak_gpu or 0.0, 1),
                      gpu_process_mb=None if process_gpu is None else round(process_gpu, 1),
                      device=_device_name(gpu)))


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
