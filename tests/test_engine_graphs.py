"""The engine-ready graphs (export --layout engine): one ONNX Runtime call per patch for every
row writes the reference's pieces, whatever the rows, and writes the caches in place."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
import torch
from test_generate import _mixed_requests

from notagen_trt.cli import main
from notagen_trt.config import VOCAB_SIZE, ModelConfig
from notagen_trt.demo import DEMO_CHECKPOINT
from notagen_trt.export import engine_graphs
from notagen_trt.export.model import NotaGenModel
from notagen_trt.export.onnx_export import export_onnx
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime.engine import Engine, PieceRequest, generate
from notagen_trt.runtime.graph_executor import GraphExecutor
from notagen_trt.runtime.executor import Executor, SideBySide
from notagen_trt.runtime.onnx_backend import OrtBackend, session_options
from notagen_trt.runtime.piece import GenerationConfig, PatchRequest
from notagen_trt.runtime.sampling import SamplingParams, sample


@pytest.fixture(scope="module")
def demo_engine_dir(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-engine")
    export_onnx(demo, out, checkpoint_path=DEMO_CHECKPOINT, layout="engine")
    return out


@pytest.fixture(scope="module")
def trained_engine_dir(trained, trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained-engine")
    export_onnx(trained, out, checkpoint_path=trained_checkpoint, layout="engine")
    return out


def test_export_records_the_layout_and_the_graphs_parity(demo_engine_dir):
    manifest = json.loads((demo_engine_dir / "manifest.json").read_text())
    assert manifest["layout"] == "engine"
    assert set(manifest["graphs"]) == {"patch_decoder", "char_decoder", "patch_engine", "context_loader"}
    engine = manifest["graphs"]["patch_engine"]
    assert engine["kv_layout"]["kind"] == "fixed"
    assert engine["inputs"][-1]["shape"] == ["rows", 3, 512, 64]  # demo: 3 heads, capacity 512
    parity = manifest["parity"]["engine_graphs"]
    assert set(parity["max_abs_diff"]) == {"patch_engine", "context_loader", "patch_engine.cpu"}
    assert all(d <= parity["tolerance"] for d in parity["max_abs_diff"].values())
    # The CPU form (what ONNX Runtime runs on a CPU) has the same IO.
    assert engine["cpu_file"] == "patch_engine.cpu.onnx" and set(engine["checksums"]) == {"patch_engine.onnx",
                                                                                          "patch_engine.cpu.onnx"}
    fixed, cpu = (onnx.load(str(demo_engine_dir / f)).graph for f in ("patch_engine.onnx", "patch_engine.cpu.onnx"))
    assert [(v.name, v.type) for v in [*cpu.input, *cpu.output]] == [(v.name, v.type) for v in [*fixed.input, *fixed.output]]

    def fused(graph, op):
        return [n for n in graph.node if n.op_type == op and n.domain == "com.microsoft"]

    # Its patch step attends through ONNX Runtime's GroupQueryAttention (one a layer: it writes the
    # caches at each row's position and reads up to it) instead of a ScatterND per cache, and its
    # char steps through MultiHeadAttention (2 layers, chars 2..16; the first char attends to
    # itself alone); the fixed form keeps to standard ops for TensorRT.
    attention = fused(cpu, "GroupQueryAttention")
    assert len(attention) == 5 and {n.input[3] for n in attention} == {f"past_key_values.{i}.key" for i in range(5)}
    assert not [n for n in cpu.node if n.op_type == "ScatterND"]
    assert len([n for n in fixed.node if n.op_type == "ScatterND"]) == 2 * 5
    assert len(fused(cpu, "MultiHeadAttention")) == 2 * 15
    assert not any(n.domain for n in fixed.node)
    # Chars 2..16 take their first layer's query, key and value from a table (a character at a
    # known place): 15 LayerNorms fewer than the fixed form, and 15 tables [128, 3 * 192].
    norms = lambda graph: sum(n.op_type == "LayerNormalization" for n in graph.node)  # noqa: E731
    assert norms(fixed) - norms(cpu) == 15
    tensors = [*cpu.initializer, *(a.t for n in cpu.node if n.op_type == "Constant" for a in n.attribute)]
    assert sum(list(t.dims) == [128, 576] for t in tensors) == 15


@pytest.fixture(scope="module")
def sampler_session(tmp_path_factory):
    """engine_graphs.sample alone, traced to ONNX as the patch engine holds it."""
    import onnxruntime as ort

    class Sampler(torch.nn.Module):
        def forward(self, logits, u, top_k, top_p, inv_temperature):
            column = lambda x: x[:, None, None]  # noqa: E731 (one char per row: [rows, 1, 1])
            return engine_graphs.sample(logits[:, None], column(u), engine_graphs.top_k_mask(top_k)[:, None], column(top_p),
                                        column(inv_temperature))[:, 0]

    path = tmp_path_factory.mktemp("sampler") / "sampler.onnx"
    args = (torch.randn(2, VOCAB_SIZE), torch.rand(2, dtype=torch.float64), torch.full((2,), 9),
            torch.full((2,), 0.9, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    names = ["logits", "u", "top_k", "top_p", "inv_temperature"]
    torch.onnx.export(Sampler(), args, str(path), input_names=names, output_names=["ids"], opset_version=17,
                      dynamic_axes={n: {0: "rows"} for n in names}, dynamo=False)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=0, top_p=0.5, temperature=0.7),
                                    SamplingParams(top_k=1, top_p=1.0, temperature=2.0)])
def test_in_graph_sampling_draws_what_numpy_draws(sampler_session, params):
    rng = np.random.default_rng(0)
    rows = 512
    logits = (rng.standard_normal((rows, VOCAB_SIZE)) * 3).astype(np.float32)
    logits[:64, 40:48] = logits[:64, 40:41]  # ties: both sides must rank the lower id first
    u = rng.random(rows)
    column = lambda v, dtype: np.full(rows, v, dtype=dtype)  # noqa: E731
    got = sampler_session.run(None, {"logits": logits, "u": u,
                                     "top_k": column(params.top_k or VOCAB_SIZE, np.int64),
                                     "top_p": column(params.top_p, np.float64),
                                     "inv_temperature": column(1.0 / params.temperature, np.float64)})[0]
    assert got.tolist() == [int(sample(logits[i], u[i], params)) for i in range(rows)]


def test_the_cpu_forms_draws_sort_only_the_ranks_every_rows_top_k_needs(tmp_path):
    """The CPU form sorts and weighs only as many ranks as the largest top-k of the call asks
    (``sample``'s ``ranks``), then scatters into zeros: rows with different top-k in one call draw
    what numpy draws, ties included."""
    import onnxruntime as ort

    class Sampler(torch.nn.Module):
        def forward(self, logits, u, top_k, top_p, inv_temperature):
            column = lambda x: x[:, None, None]  # noqa: E731 (one char per row: [rows, 1, 1])
            in_top_k, ranks, blank = engine_graphs.ranks_of_the_call(top_k, u[:, None])
            return engine_graphs.sample(logits[:, None], column(u), in_top_k, column(top_p),
                                        column(inv_temperature), ranks, blank)[:, 0]

    path = tmp_path / "sampler.onnx"
    args = (torch.randn(2, VOCAB_SIZE), torch.rand(2, dtype=torch.float64), torch.tensor([9, 20]),
            torch.full((2,), 0.9, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    names = ["logits", "u", "top_k", "top_p", "inv_temperature"]
    torch.onnx.export(Sampler(), args, str(path), input_names=names, output_names=["ids"], opset_version=17,
                      dynamic_axes={n: {0: "rows"} for n in names}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("TopK") == 1
    rng = np.random.default_rng(1)
    rows = 256
    logits = (rng.standard_normal((rows, VOCAB_SIZE)) * 3).astype(np.float32)
    logits[:32, 40:48] = logits[:32, 40:41]  # ties: both sides must rank the lower id first
    for top_ks in ([1, 9, 2, 5], [9, 128], [3, 0]):  # 0: off (the engine passes 128)
        params = [SamplingParams(top_k=top_ks[i % len(top_ks)], top_p=(0.5, 0.9, 1.0)[i % 3],
                                 temperature=(0.7, 1.2, 2.0)[i % 3]) for i in range(rows)]
        u = rng.random(rows)
        got = session.run(None, {"logits": logits, "u": u,
                                 "top_k": np.array([p.top_k or VOCAB_SIZE for p in params]),
                                 "top_p": np.array([p.top_p for p in params]),
                                 "inv_temperature": np.array([1.0 / p.temperature for p in params])})[0]
        assert got.tolist() == [int(sample(logits[i], u[i], params[i])) for i in range(rows)]


def test_demo_pieces_equal_the_cached_reference_on_one_and_four_rows(demo, demo_engine_dir):
    requests = [PieceRequest(None, GenerationConfig(seed=s)) for s in range(8)]
    reference = Engine(ReferenceBackend(demo, "cached").executor()).generate(requests)
    backend = OrtBackend(demo_engine_dir, "cpu", threads=1)
    for rows in (1, 4):
        executor = backend.executor(rows)
        parts = executor.parts if isinstance(executor, SideBySide) else [executor]  # a call per core
        assert all(isinstance(p, GraphExecutor) for p in parts) and sum(p.rows for p in parts) == rows
        pieces = Engine(executor).generate(requests)
        assert [p.text for p in pieces] == [p.text for p in reference]
        assert [p.patches for p in pieces] == [p.patches for p in reference]
    assert all(p.complete for p in reference)


class _TimedPart(Executor):
    """Two rows that record which thread ran each call and when it returned (SideBySide's threads)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.name, self.rows = "part", 2
        self.config = ModelConfig(hidden_size=64, patch_num_layers=1, char_num_layers=1, patch_length=16)
        self.delay, self.fail, self.calls = delay, fail, []

    def load(self, row, patches):
        pass

    def sample(self, requests):
        time.sleep(self.delay)
        self.calls.append((threading.current_thread(), time.monotonic()))
        if self.fail:
            raise RuntimeError("this part failed")
        return {r: np.full(16, r) for r in requests}

    def accept(self, rows):
        pass


def test_side_by_side_calls_its_first_part_here_and_returns_after_every_part():
    """The first part's call runs on the caller's thread and the others on the pool's; rows map
    back to the executor's numbering; a part's error is raised only once every call has returned."""
    request = PatchRequest([], np.zeros(16), SamplingParams())
    parts = [_TimedPart(), _TimedPart(delay=0.05)]
    got = SideBySide("parts", parts).sample({0: request, 2: request, 3: request})
    assert {row: int(tokens[0]) for row, tokens in got.items()} == {0: 0, 2: 0, 3: 1}
    assert parts[0].calls[0][0] is threading.current_thread()
    assert parts[1].calls[0][0] is not threading.current_thread()
    assert SideBySide("parts", parts).sample({}) == {} and len(parts[0].calls) == 1  # nothing asked: no call
    slow = _TimedPart(delay=0.1)
    with pytest.raises(RuntimeError, match="this part failed"):
        SideBySide("parts", [_TimedPart(fail=True), slow]).sample({0: request, 2: request})
    raised = time.monotonic()
    assert len(slow.calls) == 1 and slow.calls[0][1] <= raised  # returned before the error reached here


def test_in_flight_pieces_equal_the_reference_one_row_pieces(trained, trained_engine_dir):
    """3 rows, 8 pieces of different prompts, seeds, settings and limits on the engine-ready graphs
    (one halves its context, one is cancelled): every finished piece is the reference's one-row piece."""
    requests = _mixed_requests()
    one_row = Engine(ReferenceBackend(trained, "cached").executor(1), patch_length=22).generate(requests)
    engine = Engine(OrtBackend(trained_engine_dir, "cpu", threads=1).executor(3), patch_length=22)
    handles = {}

    def cancel_piece_six(event):
        if event.handle.request.tag == 6 and event.kind == "patch" and event.handle.piece.patches == 5:
            event.handle.cancel()

    for handle in engine.run(reversed(requests), cancel_piece_six):
        handles[handle.request.tag] = handle
    assert handles[6].piece.stop_reason == "cancelled" and one_row[6].text.startswith(handles[6].piece.text)
    for i, piece in enumerate(one_row):
        if i != 6:
            got = handles[i].piece
            assert (got.text, got.patches, got.stop_reason, got.rebuilds) == (
                piece.text, piece.patches, piece.stop_reason, piece.rebuilds)
    assert any(p.rebuilds for p in one_row)


def test_a_piece_that_fills_the_whole_capacity_equals_the_reference(tiny_dir, tmp_path):
    """Random weights write no bar lines to halve at, so the piece runs into the context's end:
    every one of the graph's 32 cache positions is written and read."""
    from notagen_trt.export.checkpoint import load_model

    model = load_model(tiny_dir / "tiny.pth")
    export_onnx(model, tmp_path, checkpoint_path=tiny_dir / "tiny.pth", layout="engine")
    config = GenerationConfig(seed=1, max_patches=100)
    ours = generate(OrtBackend(tmp_path, "cpu").executor(2), None, config)
    ref = generate(ReferenceBackend(model, "cached").executor(), None, config)
    assert (ours.text, ours.patches, ours.stop_reason) == (ref.text, ref.patches, ref.stop_reason)
    assert ref.stop_reason == "context_full" and ref.patches == model.config.patch_length - 1


def test_caches_and_row_state_are_written_in_place(trained_engine_dir):
    backend = OrtBackend(trained_engine_dir, "cpu", threads=1)
    executor = GraphExecutor(trained_engine_dir, backend.manifest, backend.config, 2, session_options(1))
    host = executor._host
    cache = host["past_key_values.0.key"]
    before = cache.ctypes.data
    executor.load(1, np.full((5, 16), 65, dtype=np.int64))
    assert host["position"].tolist() == [0, 5]
    assert np.abs(cache[1, :, :5]).sum() > 0 and not cache[1, :, 5:].any() and not cache[0].any()
    request = PatchRequest([], np.full(16, 0.5), SamplingParams())
    executor.sample({1: request})
    executor.accept([1])
    executor.sample({1: request})
    assert host["position"].tolist() == [0, 6]  # the accept was applied in the next call
    assert cache.ctypes.data == before and np.abs(cache[1, :, 5]).sum() > 0 and np.abs(cache[1, :, 6]).sum() > 0
    assert not cache[0].any()  # a lone row's call is a call of that row alone


def test_generate_cli_runs_the_engine_ready_graphs(demo_engine_dir, tmp_path, capsys):
    rc = main(["generate", "--model", str(demo_engine_dir), "--backend", "ort-cpu", "--num-pieces", "2",
               "--max-patches", "8", "--out", str(tmp_path), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "onnxruntime-cpu-engine-graph"
    assert len(summary["pieces"]) == 2 and all("abc" in r["files"] for r in summary["pieces"])


def _inputs_behind(graph: onnx.GraphProto, names: list[str]) -> set[str]:
    """The graph inputs that the tensors ``names`` are computed from."""
    producer = {o: n for n in graph.node for o in n.output}
    inputs, seen, found = {i.name for i in graph.input}, set(), set()
    while names:
        name = names.pop()
        if name not in seen:
            seen.add(name)
            found |= {name} & inputs
            names += list(producer[name].input) if name in producer else []
    return found


@pytest.mark.slow
def test_fp16_and_int8_wo_engine_ready_variants_write_pieces_as_good_as_fp32(demo_variant):
    """The demo's variants hold the engine-ready graphs too (the demo directory does): fp16 ones
    keep fp16 caches and write the fp32 pieces for most seeds; int8 weights change pieces (on a
    CPU, int8-wo runs the graphs' MatMulNBits form), but they end as pieces do and are valid about
    as often as fp32's (music21 parse, meter)."""
    from notagen_trt.demo import demo_model_dir
    from notagen_trt.runtime.evaluate import generated_validity

    requests = [PieceRequest(None, GenerationConfig(seed=s)) for s in range(8)]
    fp32 = OrtBackend(demo_model_dir(), "cpu", threads=1)
    want = Engine(fp32.executor(4)).generate(requests)
    fp16 = OrtBackend(demo_variant("fp16"), "cpu", threads=1)
    assert fp16.manifest["layout"] == "engine"
    assert fp16.manifest["graphs"]["patch_engine"]["inputs"][-1]["dtype"] == "float16"
    # It carries the CPU form in fp16 too (what ONNX Runtime runs on a CPU, and on CUDA in fp16):
    # the fused attention nodes, fp16 caches, the fixed form's IO.
    entry = fp16.manifest["graphs"]["patch_engine"]
    assert entry["cpu_file"] == "patch_engine.cpu.onnx" and entry["cpu_file"] in entry["checksums"]
    fixed16, cpu16 = (onnx.load(str(demo_variant("fp16") / f)).graph for f in (entry["file"], entry["cpu_file"]))
    assert [(v.name, v.type) for v in [*cpu16.input, *cpu16.output]] == [
        (v.name, v.type) for v in [*fixed16.input, *fixed16.output]]
    assert sum(n.op_type == "GroupQueryAttention" for n in cpu16.node) == 5
    # Its draws sort all 128 ranks (a CUDA graph holds no shape computed from data); the fp32 CPU
    # form sorts as many as the call's largest top-k.
    ranks = lambda graph: _inputs_behind(graph, [n.input[1] for n in graph.node if n.op_type == "TopK"])  # noqa: E731
    assert ranks(cpu16) == set()
    assert ranks(onnx.load(str(demo_model_dir() / entry["cpu_file"])).graph) == {"top_k"}
    assert {i.data_type for i in cpu16.initializer if i.dims and len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    executor = fp16.executor(4)
    assert all(part.files[0] == demo_variant("fp16") / "patch_engine.cpu.onnx" for part in executor.parts)
    got = Engine(executor).generate(requests)
    assert sum(a.text == b.text for a, b in zip(got, want)) >= 6
    int8 = OrtBackend(demo_variant("int8-wo"), "cpu", threads=1)
    # On a CPU the int8-wo variant runs its CPU form (MatMulNBits); TensorRT builds from the QDQ file.
    entry = int8.manifest["graphs"]["patch_engine"]
    cpu_form = onnx.load(str(demo_variant("int8-wo") / entry["cpu_file"]), load_external_data=False).graph
    assert entry["cpu_file"] in entry["checksums"]
    assert {n.op_type for n in cpu_form.node} >= {"MatMulNBits"} and "DequantizeLinear" not in {
        n.op_type for n in cpu_form.node}
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(demo_variant("int8-wo") / entry["file"])).graph.node)
    # Blocks of 64 inputs: 128 does not divide the demo's hidden size (192).
    assert {a.i for n in cpu_form.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"} == {64}
    assert "blocks of 64" in int8.manifest["quantization"]["cpu_form"]["weights"]
    executor = int8.executor(4)
    assert all(part.files == (demo_variant("int8-wo") / "patch_engine.cpu.onnx",
                              demo_variant("int8-wo") / "context_loader.cpu.onnx") for part in executor.parts)
    assert all(p.complete for p in Engine(executor).generate(requests))
    # 32 seeds, and a margin of 2 pieces (about one binomial standard deviation at this rate): a
    # change of rounding anywhere moves a few int8 pieces, and each flips either way. Block sizes
    # 32 / 64 / 128 / 256 gave 17 / 15 / 11 / 9 valid of 32 against fp32's 11. Of 96 seeds, fp32
    # 45; int8-wo 47 with a ScatterND and a window Slice per cache in the patch step, 44 with
    # GroupQueryAttention there (3 pieces differ).
    valid = lambda backend: sum(c.valid for c in generated_validity(backend, 32))  # noqa: E731
    assert valid(int8) >= valid(fp32) - 2


def test_a_model_with_big_ops_runs_its_rows_in_one_call_on_every_core(trained_engine_dir, tmp_path, monkeypatch):
    """AUTO threads (generate's default): for small ops one thread per call, rows side by side a
    core each; when the model's ops split well (hidden size 512 and up), every row in one call on
    every core. Its pieces are the ones one thread writes."""
    from notagen_trt.runtime import onnx_backend

    monkeypatch.setattr(onnx_backend, "usable_cores", lambda: 2)
    big = tmp_path / "big"
    torch.manual_seed(0)
    export_onnx(NotaGenModel(ModelConfig(hidden_size=512, patch_num_layers=1, char_num_layers=1, patch_length=16)),
                big, parity=False, layout="engine")

    def threads(executor) -> list[int]:
        parts = getattr(executor, "parts", [executor])
        return [p._engine.get_session_options().intra_op_num_threads for p in parts]

    assert threads(OrtBackend(big, "cpu", onnx_backend.AUTO).executor(1)) == [2]
    assert threads(OrtBackend(big, "cpu", onnx_backend.AUTO).executor(4)) == [2]  # one call, both cores
    assert threads(OrtBackend(big, "cpu", 1).executor(1)) == [1]  # asked for
    assert threads(OrtBackend(big, "cpu", 1).executor(4)) == [1, 1]  # asked for: a core each
    assert threads(OrtBackend(trained_engine_dir, "cpu", onnx_backend.AUTO).executor(1)) == [1]  # small ops
    assert threads(OrtBackend(trained_engine_dir, "cpu", onnx_backend.AUTO).executor(4)) == [1, 1]  # a core each

    def spinning(executor) -> str:
        return executor._engine.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    # The lone call on every core spins between ops (a waking thread misses each node's start);
    # threads asked for do not, as calls of several sessions may share the cores.
    assert spinning(OrtBackend(big, "cpu", onnx_backend.AUTO).executor(1)) == "1"
    assert spinning(OrtBackend(big, "cpu", 2).executor(1)) == "0"
    pieces = [Engine(OrtBackend(big, "cpu", t).executor(rows)).generate(
        [PieceRequest(None, GenerationConfig(seed=s, max_patches=12)) for s in range(3)])
        for t, rows in ((1, 1), (onnx_backend.AUTO, 1), (onnx_backend.AUTO, 4))]
    assert [p.text for p in pieces[0]] == [p.text for p in pieces[2]]
    assert [p.text for p in pieces[0]] == [p.text for p in pieces[1]]
    # Every CPU call's buffers come from malloc (jemalloc under the command), not ONNX Runtime's arena.
    for executor in (OrtBackend(big, "cpu", onnx_backend.AUTO).executor(1),
                     OrtBackend(trained_engine_dir, "cpu", onnx_backend.AUTO).executor(4)):
        assert not any(p._engine.get_session_options().enable_cpu_mem_arena for p in getattr(executor, "parts", [executor]))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and two usable cores")
def test_a_process_pinned_to_one_core_runs_one_thread_whatever_the_host_has(trained_engine_dir, tmp_path):
    """taskset / cpusets (and a container's CPU quota): the rows' calls follow the cores this
    process may use, not os.cpu_count(), which counts the host's: rows side by side a core each
    (small ops), or one call on every core (big ops), both on the one core when pinned."""
    from notagen_trt.runtime import onnx_backend
    from notagen_trt.runtime.cores import usable_cores

    big = tmp_path / "big"
    torch.manual_seed(0)
    export_onnx(NotaGenModel(ModelConfig(hidden_size=512, patch_num_layers=1, char_num_layers=1, patch_length=16)),
                big, parity=False, layout="engine")
    code = f"""
import os
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
from notagen_trt.runtime import onnx_backend
from notagen_trt.runtime.cores import usable_cores
small = onnx_backend.OrtBackend({str(trained_engine_dir)!r}, "cpu", onnx_backend.AUTO).executor(4)
big = onnx_backend.OrtBackend({str(big)!r}, "cpu", onnx_backend.AUTO).executor(4)
print(usable_cores(), os.cpu_count(), len(getattr(small, "parts", [small])),
      small._engine.get_session_options().intra_op_num_threads, big._engine.get_session_options().intra_op_num_threads)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    usable, host, calls, small_threads, big_threads = map(int, out.stdout.split())
    assert (usable, calls, small_threads, big_threads) == (1, 1, 1, 1) and host >= 2  # all on the one core
    # Unpinned, the same: a call a core (up to the 4 rows), or one call on every core.
    assert len(OrtBackend(trained_engine_dir, "cpu", "auto").executor(4).parts) == min(4, usable_cores())
    executor = OrtBackend(big, "cpu", onnx_backend.AUTO).executor(4)
    assert executor._engine.get_session_options().intra_op_num_threads == usable_cores()
