"""TensorRT plans: TensorRT-RTX builds of the demo model (fp32, fp16, int8-wo) on this CPU-only
machine, their manifests, the timing cache, and the refusals of mismatched or damaged engines.
Running a plan needs a GPU TensorRT supports: those tests are marked ``tensorrt`` / ``gpu`` and
skip, saying why, where the runtime cannot run (no GPU, no TensorRT, or TensorRT-RTX on a GPU it
does not support, such as datacenter Hopper). Nothing here loads TensorRT at import, so the
module collects on any machine."""

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from notagen_trt.demo import demo_model_dir
from notagen_trt.engines import build as build_mod
from notagen_trt.engines.build import build_engines, dim_ranges
from notagen_trt.engines.engine_manifest import (RuntimeInfo, check_engine, engine_io_mismatch, onnx_digest,
                                                 version_accepts)
from notagen_trt.engines.flavors import FLAVORS, unusable_reason
from notagen_trt.errors import NotaGenError
from notagen_trt.files import sha256_file
from notagen_trt.manifest import ENGINE_GRAPHS, GRAPH_NAMES, graph_io, read_manifest

PRECISIONS = ("fp32", "fp16", "int8-wo")


@pytest.fixture(scope="module")
def rtx_version() -> str:
    """CI installs TensorRT-RTX (Makefile): a missing install fails the CPU build tests loudly."""
    return FLAVORS["rtx"].version(FLAVORS["rtx"].load())


@pytest.fixture(scope="module")
def onnx_dirs(demo_variant):
    """The demo model's ONNX directory per precision (variants written by engines.quantize)."""
    return {"fp32": demo_model_dir(), **{precision: demo_variant(precision) for precision in PRECISIONS[1:]}}


@pytest.fixture(scope="module")
def engines(onnx_dirs, tmp_path_factory):
    """{precision: (engine dir, manifest, seconds)}: RTX plans built here, without a GPU."""
    out = {}
    for precision, src in onnx_dirs.items():
        dst = tmp_path_factory.mktemp(f"engine-{precision}")
        start = time.perf_counter()
        manifest = build_engines(src, dst, flavor="rtx")
        out[precision] = (dst, manifest, time.perf_counter() - start)
    return out


def _report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[engines] {line}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rtx_plans_match_their_manifest(engines, onnx_dirs, precision, rtx_version, capsys):
    engine_dir, manifest, seconds = engines[precision]
    written = read_manifest(engine_dir, expect_kind="engine")
    assert {k: v for k, v in written.items() if k != "checksum"} == {k: v for k, v in manifest.items() if k != "checksum"}
    onnx_manifest = read_manifest(onnx_dirs[precision], expect_kind="onnx")
    engine = manifest["engine"]
    assert (engine["flavor"], engine["version"]) == ("rtx", rtx_version)
    assert engine["compute_capabilities"] == ["8.6", "8.9", "12.0"] and engine["gpu"] is None
    assert manifest["precision"] == onnx_manifest["precision"] == precision
    sizes = []
    for name in GRAPH_NAMES:
        graph, spec = manifest["graphs"][name], onnx_manifest["graphs"][name]
        plan = (engine_dir / graph["file"]).read_bytes()
        assert graph["plan"] == {"bytes": len(plan), "sha256": sha256_file(engine_dir / graph["file"])}
        assert graph["onnx_sha256"] == onnx_digest(onnx_dirs[precision], spec)
        # IO: the parsed network's tensors are the ONNX manifest's, in order, and the plan names each.
        names = [s["name"] for s in spec["inputs"] + spec["outputs"]]
        assert [s["name"] for s in graph["network_io"]["inputs"] + graph["network_io"]["outputs"]] == names
        assert all(n.encode() in plan for n in names)
        # Profiles: prefill (empty past allowed) and decode (one new position), every input covered,
        # each symbolic dim with the same range wherever it appears.
        prefill, decode = graph["profiles"]
        assert (prefill["name"], decode["name"]) == ("prefill", "decode")
        top = spec["max_positions"]
        assert prefill["dims"] == dim_ranges(graph_io(onnx_manifest, name), 1)["prefill"]
        assert {n: r for n, r in prefill["dims"].items() if n.startswith("past")} == {n: [0, 0, top - 1] for n in
                                                                                         prefill["dims"] if
                                                                                         n.startswith("past")}
        assert [r for n, r in decode["dims"].items() if n.startswith("new")] == [[1, 1, 1]]
        for profile in (prefill, decode):
            assert set(profile["shapes"]) == {s["name"] for s in spec["inputs"]}
            for s in spec["inputs"]:
                for k in range(3):
                    want = [profile["dims"][d][k] if isinstance(d, str) else d for d in s["shape"]]
                    assert profile["shapes"][s["name"]][k] == want
        sizes.append(f"{name} {len(plan) / 1e6:.1f} MB in {graph['build_seconds']:.2f} s")
    # The demo model's directories hold the engine-ready graphs too: one profile, rows 1..max
    # batch, a context load's patches 1..capacity; IO (fp16 variants: fp16 caches) as the manifest says.
    assert manifest["layout"] == onnx_manifest["layout"] == "engine"
    for name in ENGINE_GRAPHS:
        graph, spec = manifest["graphs"][name], onnx_manifest["graphs"][name]
        plan = (engine_dir / graph["file"]).read_bytes()
        assert graph["plan"] == {"bytes": len(plan), "sha256": sha256_file(engine_dir / graph["file"])}
        names = [s["name"] for s in spec["inputs"] + spec["outputs"]]
        assert [s["name"] for s in graph["network_io"]["inputs"] + graph["network_io"]["outputs"]] == names
        cache = next(s for s in graph["network_io"]["inputs"] if s["name"].startswith("past_key_values."))
        assert cache["dtype"] == ("half" if precision == "fp16" else "float")  # TensorRT's names
        assert spec["inputs"][-1]["dtype"] == ("float16" if precision == "fp16" else "float32")
        (profile,) = graph["profiles"]
        top = spec["max_positions"]
        want = {"rows": [1, 1, 1], **({"patches": [1, top // 2, top]} if name == "context_loader" else {})}
        assert profile["name"] == "engine" and profile["dims"] == want
        for s in spec["inputs"]:
            assert profile["shapes"][s["name"]] == [[want[d][k] if isinstance(d, str) else d for d in s["shape"]]
                                                    for k in range(3)]
        sizes.append(f"{name} {len(plan) / 1e6:.1f} MB in {graph['build_seconds']:.2f} s")
    _report(capsys, f"rtx {precision}: {', '.join(sizes)} (whole build {seconds:.1f} s)")


def test_rebuild_with_timing_cache_is_reported(engines, onnx_dirs, tmp_path, capsys):
    """TensorRT-RTX ignores the timing cache (its calls are no-ops since RTX 1.2), so the build
    records that and writes no cache; the rebuild time is reported next to the cold one. The
    speed-up of full TensorRT's cache is checked where TensorRT runs (test_trt_timing_cache_...)."""
    _, cold, _ = engines["fp32"]
    cache = tmp_path / "timing.cache"
    again = build_engines(onnx_dirs["fp32"], tmp_path / "again", flavor="rtx", timing_cache=cache)
    assert "no-ops" in again["engine"]["timing_cache"] and not cache.exists()
    for name in GRAPH_NAMES:  # same inputs, same plan size (RTX builds are deterministic in size)
        assert again["graphs"][name]["plan"]["bytes"] == cold["graphs"][name]["plan"]["bytes"]
    times = {n: (cold["graphs"][n]["build_seconds"], again["graphs"][n]["build_seconds"]) for n in GRAPH_NAMES}
    _report(capsys, "rtx fp32 cold vs rebuild with --timing-cache (no-op in RTX): " +
            ", ".join(f"{n} {a:.2f} s / {b:.2f} s" for n, (a, b) in times.items()))


class _FakeCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob + b"+tuned"


class _FakeConfig:
    """Records the timing-cache calls full TensorRT's builder config receives."""

    def __init__(self) -> None:
        self.attached = []

    def create_timing_cache(self, blob: bytes) -> _FakeCache:
        return _FakeCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch) -> None:
        self.attached.append((cache, ignore_mismatch))


def test_full_tensorrt_timing_cache_is_loaded_attached_and_saved_atomically(tmp_path):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"old")
    config = _FakeConfig()
    cache = build_mod._TimingCache(FLAVORS["trt"], config, path)
    cache.attach(config)
    assert config.attached == [(cache.cache, False)] and cache.cache.blob == b"old"
    assert cache.save() == {"path": str(path), "loaded_bytes": 3, "saved_bytes": 9}
    assert path.read_bytes() == b"old+tuned" and [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


# ---------------------------------------------------------------- refusals, one line each

@pytest.fixture
def engine_copy(engines, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(engines["fp32"][0], dst)
    return dst


def _refused(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(NotaGenError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_plan_is_refused(engine_copy):
    plan = engine_copy / "char_decoder.plan"
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    assert str(plan) in _refused("truncated", check_engine, engine_copy)


def test_flipped_bytes_are_refused(engine_copy):
    plan = engine_copy / "patch_decoder.plan"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))
    assert str(plan) in _refused("corrupt", check_engine, engine_copy)


def test_other_compute_capability_is_refused(engine_copy, rtx_version):
    here = RuntimeInfo("rtx", rtx_version, "NVIDIA H100 80GB HBM3", "9.0")
    message = _refused("compute capability 8.6, 8.9, 12.0", check_engine, engine_copy, here)
    assert str(engine_copy / "manifest.json") in message and "9.0" in message


def test_other_tensorrt_version_is_refused(engine_copy, rtx_version):
    here = RuntimeInfo("rtx", "1.6.1.120", "NVIDIA GeForce RTX 4090", "8.9")
    _refused(f"built with rtx {rtx_version}, this is 1.6.1.120", check_engine, engine_copy, here)
    _refused("flavour 'rtx'", check_engine, engine_copy, RuntimeInfo("trt", "10.14.1", "RTX 4090", "8.9"))
    check_engine(engine_copy, RuntimeInfo("rtx", rtx_version, "NVIDIA GeForce RTX 4090", "8.9"))  # a match passes


def test_the_runtime_probe_runs_only_on_intact_plans(engine_copy, rtx_version):
    """The TensorRT backend hands check_engine a probe of this machine: it gets the engine's
    flavour, and is not called at all when a plan is damaged (no TensorRT load for a bad file)."""
    asked = []

    def probe(flavor: str) -> RuntimeInfo:
        asked.append(flavor)
        return RuntimeInfo(flavor, rtx_version, "NVIDIA H200", "9.0")

    _refused("this GPU \\(NVIDIA H200\\) is 9.0", check_engine, engine_copy, probe)
    assert asked == ["rtx"]
    plan = engine_copy / "char_decoder.plan"
    plan.write_bytes(plan.read_bytes()[:100])
    _refused("truncated", check_engine, engine_copy, probe)
    assert asked == ["rtx"]


class _FakeEngine:
    """The ICudaEngine calls engine_io_mismatch makes, answering from a manifest (what a plan
    that matches its manifest would say) with one profile shape changed when asked."""

    def __init__(self, io, bad=None) -> None:
        self.io, self.bad = io, bad  # (tensor, profile index, shapes it reports instead)
        self.names = [*io.input_names, *io.output_names]
        self.num_optimization_profiles = len(io.profiles)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_profile_shape(self, name: str, index: int):
        shapes = self.io.profiles[index]["shapes"][name]
        return self.bad[2] if self.bad and (name, index) == self.bad[:2] else [tuple(s) for s in shapes]


def test_engine_io_is_checked_against_the_manifest_after_deserialization(engines):
    _, manifest, _ = engines["fp32"]
    io = graph_io(manifest, "char_decoder")
    assert len(io.profiles) == 2 and io.past_names[0] == "past_key_values.0.key"
    assert engine_io_mismatch(_FakeEngine(io), io) is None
    wrong = _FakeEngine(io)
    wrong.names = wrong.names[:-1]
    assert "differ from the manifest" in engine_io_mismatch(wrong, io)
    bad = _FakeEngine(io, ("input_ids", 1, [(1, 1), (1, 1), (1, 2)]))
    assert engine_io_mismatch(bad, io).startswith("profile 1 (decode) gives input_ids [[1, 1], [1, 1], [1, 2]]")


def test_version_compatible_engines_accept_newer_runtimes_of_the_same_major():
    assert version_accepts("10.8.0", "10.8.0", False) and not version_accepts("10.8.0", "10.9.0", False)
    assert version_accepts("10.8.0", "10.14.1", True) and not version_accepts("10.8.0", "11.0.0", True)
    assert not version_accepts("10.8.0", "10.7.0", True)


def test_engine_from_another_model_is_refused(engine_copy, onnx_dirs):
    check_engine(engine_copy, onnx_dir=onnx_dirs["fp32"])
    message = _refused("built from another model", check_engine, engine_copy, onnx_dir=onnx_dirs["int8-wo"])
    assert str(engine_copy / "patch_decoder.plan") in message


def test_no_gpu_here_falls_back_to_onnx_runtime_saying_why(engine_copy):
    from notagen_trt.runtime.backends import select_backend

    backend, note = select_backend(engine_copy, "auto")
    assert backend.name == "onnxruntime-cpu" and "not TensorRT" in note
    (engine_copy / "char_decoder.plan").write_bytes(b"\0" * 64)
    backend, note = select_backend(engine_copy, "auto")
    assert backend.name == "onnxruntime-cpu" and "char_decoder.plan: plan is truncated" in note


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "notagen_trt.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_refusals_are_one_line(engine_copy, tmp_path):
    plan = engine_copy / "patch_decoder.plan"
    plan.write_bytes(plan.read_bytes()[:1000])
    r = _cli("generate", "--model", str(engine_copy), "--backend", "tensorrt", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "truncated" in r.stderr and str(plan) in r.stderr
    r = _cli("build", "--flavor", "rtx", "--compute-capability", "9.0", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "cannot target compute capability 9.0" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_cli_build_writes_an_engine_directory(tmp_path):
    r = _cli("build", "--flavor", "rtx", "--compute-capability", "8.9", "--out", str(tmp_path / "e"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is the JSON alone: TensorRT's warnings and progress go to stderr
    assert out["engine"]["compute_capabilities"] == ["8.9"]
    assert "building patch_decoder" in r.stderr and "{" not in r.stderr
    check_engine(tmp_path / "e", RuntimeInfo("rtx", out["engine"]["version"], "NVIDIA GeForce RTX 4090", "8.9"))


# ---------------------------------------------------------------- needs a GPU TensorRT runs on

def test_why_tensorrt_cannot_run_here_names_the_missing_piece(monkeypatch, rtx_version):
    """The reason the GPU tests skip with: no cuda-python, no GPU, no TensorRT, or TensorRT-RTX
    on datacenter Hopper, which it does not run on."""
    from notagen_trt.engines import flavors

    monkeypatch.setattr(flavors, "find_cudart", lambda: None)
    assert "cuda-python is not installed" in unusable_reason("rtx")
    monkeypatch.setattr(flavors, "find_cudart", lambda: object())
    monkeypatch.setattr(flavors, "local_gpu", lambda: None)
    assert "no CUDA GPU" in unusable_reason("rtx")
    monkeypatch.setattr(flavors, "local_gpu", lambda: {"name": "NVIDIA H200", "compute_capability": "9.0"})
    assert unusable_reason("rtx").startswith("TensorRT-RTX does not run on compute capability 9.0 (NVIDIA H200)")
    monkeypatch.setitem(FLAVORS, "trt", dataclasses.replace(FLAVORS["trt"], modules=("no_such_tensorrt_module",)))
    assert "TensorRT is not installed" in unusable_reason("trt") and "NVIDIA H200" in unusable_reason("trt")
    monkeypatch.setattr(flavors, "local_gpu", lambda: {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"})
    assert unusable_reason("rtx") is None


def _runs_here(flavor: str) -> pytest.MarkDecorator:
    """Skip, with the reason, where plans of ``flavor`` cannot run on this machine."""
    why = unusable_reason(flavor)
    return pytest.mark.skipif(why is not None, reason=f"{FLAVORS[flavor].title} cannot run here: {why}")


needs_rtx_gpu = _runs_here("rtx")
needs_trt_gpu = _runs_here("trt")


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_rtx_gpu
def test_rtx_engine_runs_and_matches_onnx_runtime(onnx_dirs, tmp_path):
    from notagen_trt.runtime.onnx_backend import OrtBackend
    from notagen_trt.runtime.trt_backend import TrtBackend

    engine_dir = tmp_path / "engine"
    build_engines(onnx_dirs["fp32"], engine_dir, flavor="rtx")  # for this GPU
    _decode_matches_onnx_runtime(TrtBackend(engine_dir, onnx_dir=onnx_dirs["fp32"]), OrtBackend(onnx_dirs["fp32"]))


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt_gpu
def test_trt_engine_runs_and_timing_cache_speeds_up_rebuilds(onnx_dirs, tmp_path, capsys):
    from notagen_trt.runtime.onnx_backend import OrtBackend
    from notagen_trt.runtime.trt_backend import TrtBackend

    cache = tmp_path / "timing.cache"
    cold = build_engines(onnx_dirs["fp32"], tmp_path / "cold", flavor="trt", timing_cache=cache)
    warm = build_engines(onnx_dirs["fp32"], tmp_path / "warm", flavor="trt", timing_cache=cache)
    assert warm["engine"]["timing_cache"]["loaded_bytes"] > 0
    a = sum(g["build_seconds"] for g in cold["graphs"].values())
    b = sum(g["build_seconds"] for g in warm["graphs"].values())
    _report(capsys, f"trt fp32 cold {a:.1f} s, with timing cache {b:.1f} s")
    assert b < a
    _decode_matches_onnx_runtime(TrtBackend(tmp_path / "warm"), OrtBackend(onnx_dirs["fp32"]))


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_rtx_gpu
def test_rtx_engine_ready_plans_write_the_onnx_runtime_pieces(onnx_dirs, tmp_path):
    """One enqueue per patch for 4 rows, ping-pong state, CUDA graphs from the third patch on.
    TensorRT runs the in-graph sampler in float32 (it has no float64), so a near-tie draw may
    differ from ONNX Runtime's float64 one: most pieces, not all, must be the same."""
    from notagen_trt.runtime.engine import Engine, PieceRequest
    from notagen_trt.runtime.onnx_backend import OrtBackend
    from notagen_trt.runtime.piece import GenerationConfig
    from notagen_trt.runtime.trt_backend import TrtBackend
    from notagen_trt.runtime.trt_graph_executor import TrtGraphExecutor

    engine_dir = tmp_path / "engine"
    build_engines(onnx_dirs["fp32"], engine_dir, flavor="rtx", max_batch=4)  # for this GPU
    requests = [PieceRequest(None, GenerationConfig(seed=s)) for s in range(8)]
    executor = TrtBackend(engine_dir).executor(4)
    assert isinstance(executor, TrtGraphExecutor)
    ours = Engine(executor).generate(requests)
    theirs = Engine(OrtBackend(onnx_dirs["fp32"]).executor(4)).generate(requests)
    assert all(p.complete for p in ours)
    assert sum(a.text == b.text for a, b in zip(ours, theirs)) >= 6


def _decode_matches_onnx_runtime(trt_backend, ort_backend) -> None:
    """Prefill, patch steps and two full patches of char steps (the second replays CUDA graphs)."""
    rng = np.random.default_rng(0)
    t, o = trt_backend.new_session(), ort_backend.new_session()
    patches = rng.integers(3, 127, size=(6, 16))
    assert np.allclose(t.extend(patches), o.extend(patches), atol=1e-3)
    for p in patches[:3]:
        hidden_t, hidden_o = t.extend(p[None]), o.extend(p[None])
        assert np.allclose(hidden_t, hidden_o, atol=1e-3)
    for _ in range(3):  # first patch uncaptured, second captures, third replays
        assert np.allclose(t.char_start(hidden_o, [1, 65]), o.char_start(hidden_o, [1, 65]), atol=1e-3)
        for token in rng.integers(3, 127, size=14):
            assert np.allclose(t.char_step(int(token)), o.char_step(int(token)), atol=1e-3)
