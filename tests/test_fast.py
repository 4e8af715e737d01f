"""The fast path (fixed-capacity caches, in-graph sampling, batched rows) writes exactly the
pieces of the reference through the same engine. On the CPU it runs eagerly; CUDA-graph replay
is the same code."""

import copy

import numpy as np
import pytest
import torch
from conftest import BACH

from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.errors import NotaGenError
from notagen_trt.fastpath.executor import FastBackend, rows_that_fit, sample_torch
from notagen_trt.runtime.engine import Engine, PieceRequest, generate
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.prompts import resolve_prompt
from notagen_trt.runtime.sampling import SamplingParams, sample



SAMPLER_PARAMS = (SamplingParams(), SamplingParams(top_k=0, top_p=0.5, temperature=0.7))


def sampler_case(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random logits with tied rows, and one uniform per row."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 128)).astype(np.float32) * 4
    logits[: rows // 10, :5] = 3.0  # ties
    return logits, rng.random(rows)


def row_params(params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row sampling settings as the executor passes them to the device samplers."""
    return (torch.tensor([p.top_k for p in params]), torch.tensor([p.top_p for p in params], dtype=torch.float64),
            torch.tensor([1.0 / p.temperature for p in params], dtype=torch.float64))


def test_device_sampler_matches_numpy_sampler():
    logits, u = sampler_case(200, 0)
    mixed = [SAMPLER_PARAMS[i % 2] for i in range(200)]  # every row its own settings
    for params in (*([p] * 200 for p in SAMPLER_PARAMS), mixed):
        want = np.array([sample(logits[i], u[i], p) for i, p in enumerate(params)])
        got = sample_torch(torch.from_numpy(logits), torch.from_numpy(u), *row_params(params)).numpy()
        assert np.array_equal(want, got)


@pytest.mark.parametrize("prompt", [None, BACH])
def test_batched_fast_path_equals_reference(trained, prompt):
    prompt = resolve_prompt(*prompt) if prompt else None
    configs = [GenerationConfig(seed=s, max_patches=40 + 20 * s) for s in range(4)]  # rows end apart
    # A loop PATCH_LENGTH of 22 (below the model's 32) makes the pieces rebuild their context.
    executor = FastBackend(copy.deepcopy(trained), "cpu", "fp32").executor(4)
    fast = Engine(executor, patch_length=22).generate(PieceRequest(prompt, c) for c in configs)
    reference = ReferenceBackend(trained, "cached")
    for piece, config in zip(fast, configs):
        want = generate(reference.executor(), prompt, config, 22)
        assert (piece.text, piece.patches, piece.stop_reason, piece.rebuilds) == (
            want.text, want.patches, want.stop_reason, want.rebuilds)
    assert any(p.rebuilds for p in fast)  # PATCH_LENGTH 32: the halving path ran in lockstep
    assert len({p.patches for p in fast}) > 1  # rows stopped at different times


def test_lone_row_runs_alone_and_trades_places(trained):
    """One piece left in a multi-row executor runs on the one-row path: its state moves to buffer
    row 0 (the other rows untouched), and pieces that arrive afterwards take the freed rows; every
    piece is still the one a one-row engine writes."""
    configs = [GenerationConfig(seed=s, max_patches=n) for s, n in ((0, 6), (1, 30), (2, 20))]
    executor = FastBackend(copy.deepcopy(trained), "cpu", "fp32").executor(3)
    engine = Engine(executor)
    first = [engine.submit(PieceRequest(None, c)) for c in configs[:2]]  # rows 0 and 1
    while not first[0].done:
        engine.step()
    idle = [t[2].clone() for t in (executor.position, executor.hidden_next, *executor.patch_kv)]
    engine.step()  # the second piece alone: buffer row 1 trades places with row 0
    assert executor._slot[:2] == [1, 0]
    # A step of every row would have written row 2's next hidden state and its keys and values.
    assert all(torch.equal(t[2], old) for t, old in zip((executor.position, executor.hidden_next, *executor.patch_kv), idle))
    late = engine.submit(PieceRequest(None, configs[2]))  # takes engine row 0, now buffer row 1
    while not (first[1].done and late.done):
        engine.step()
    one_row = FastBackend(copy.deepcopy(trained), "cpu", "fp32")
    for handle, config in zip([*first, late], configs):
        want = generate(one_row.executor(1), None, config)
        assert (handle.piece.text, handle.piece.patches) == (want.text, want.patches)


def test_forced_length_on_the_fast_path(trained):
    config = GenerationConfig(seed=0, bars=7, max_patches=40)
    piece = generate(FastBackend(copy.deepcopy(trained), "cpu", "fp32").executor(1), resolve_prompt(*BACH), config)
    assert piece.text == ReferenceBackend(trained, "cached").generate(resolve_prompt(*BACH), config).text
    assert "[r:0/7]" in piece.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for graph capture")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_replay_equals_eager(trained, precision):
    # Pieces of different lengths: the last one runs on the one-row graphs, after moving to row 0.
    requests = [PieceRequest(None, GenerationConfig(seed=s, max_patches=30 + 15 * s)) for s in range(3)]
    backend = FastBackend(copy.deepcopy(trained), "cuda", precision)
    eager = Engine(backend.executor(3, graph=False)).generate(requests)
    executor = backend.executor(3, graph=True)
    lone_steps, lone_sample = [], executor._lone._sample
    executor._lone._sample = lambda requests: lone_steps.append(1) or lone_sample(requests)
    graphed = Engine(executor).generate(requests)
    assert [p.text for p in eager] == [p.text for p in graphed]
    assert lone_steps  # the last piece ran on the one-row graphs
    if precision == "fp32":  # the reference's ops: every piece is the one-row engine's
        assert [p.text for p in graphed] == [generate(backend.executor(1), None, r.config).text for r in requests]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for graph capture")
@pytest.mark.parametrize("precision", ["fp16", "int8-wo"])
def test_a_lone_piece_on_many_rows_is_the_one_row_piece(trained, precision):
    """In fp16 / int8-wo the one-row kernels round otherwise than the batched ones: a piece alone
    on a 16-row engine must run them, and so write exactly what a one-row engine writes."""
    if precision == "int8-wo":
        pytest.importorskip("triton", reason="int8-wo on the fast path needs Triton")
    request = [PieceRequest(None, GenerationConfig(seed=3, max_patches=80))]
    backend = FastBackend(copy.deepcopy(trained), "cuda", precision)
    alone = Engine(backend.executor(16)).generate(request)[0]
    assert alone.text == Engine(backend.executor(1)).generate(request)[0].text


def test_rows_are_sized_by_their_caches(trained):
    """A row's GPU memory is its caches: keys and values of every patch- and char-level position,
    half as much in fp16 as in fp32; default rows are those that fit beside the headroom."""
    cfg = trained.config
    fp32, fp16 = (FastBackend(copy.deepcopy(trained), "cpu", p).row_bytes() for p in ("fp32", "fp16"))
    assert fp32 == 2 * 64 * cfg.num_heads * 4 * (cfg.patch_num_layers * cfg.patch_length + cfg.char_num_layers * 16)
    assert fp16 * 2 == fp32
    executor = FastBackend(copy.deepcopy(trained), "cpu", "fp32").executor(3)
    held = sum(t.numel() * t.element_size() for t in (*executor.patch_kv, *executor.char_kv))
    assert held == 3 * fp32
    assert rows_that_fit(free=(1 << 30) + 5 * fp32 + 7, row_bytes=fp32, headroom=1 << 30, most=16) == 5
    assert rows_that_fit(free=(1 << 30) + 99 * fp32, row_bytes=fp32, headroom=1 << 30, most=16) == 16
    assert rows_that_fit(free=100, row_bytes=fp32, headroom=1 << 30, most=16) == 1  # one row is always tried


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_rows_that_run_the_gpu_out_of_memory_are_refused_in_a_sentence(trained, monkeypatch, error):
    """Either form of a CUDA allocation failure while an executor is made (its caches, or a
    graph capture's end) becomes one line naming the rows that fit; other errors pass through."""
    from notagen_trt.fastpath import executor as fast_executor

    backend = FastBackend(copy.deepcopy(trained), "cpu", "fp32")
    row = backend.row_bytes()
    monkeypatch.setattr(backend, "free_bytes", lambda collect=False: backend.HEADROOM + 6 * row)

    raised = [error]

    def fail(self, *args, **kwargs):
        raise raised[0]

    monkeypatch.setattr(fast_executor.FastExecutor, "__init__", fail)
    with pytest.raises(NotaGenError, match=r"^32 rows do not fit on cpu.*--rows 6\b.*--precision fp16"):
        backend.executor(32)
    with pytest.raises(NotaGenError, match="^not even one row fits"):
        backend.executor(1)
    raised[0] = RuntimeError("an unrelated failure")
    with pytest.raises(RuntimeError, match="^an unrelated failure$"):
        backend.executor(32)


def test_a_service_wish_for_rows_gives_way_to_what_fits(trained, monkeypatch, tmp_path):
    """`serve` asks at least 4 rows; where the GPU's free memory holds fewer (the fast path's
    default), the engine takes those and says so. Rows asked for by name are refused instead."""
    from notagen_trt.fastpath import executor as fast_executor
    from notagen_trt.runtime import backends
    from notagen_trt.runtime.engine import load_engine

    backend = FastBackend(copy.deepcopy(trained), "cpu", "fp32")
    monkeypatch.setattr(FastBackend, "default_rows", property(lambda self: 2))
    monkeypatch.setattr(backend, "free_bytes", lambda collect=False: backend.HEADROOM + 2 * backend.row_bytes())
    made = fast_executor.FastExecutor.__init__

    def init(self, fast, rows=1, graph=None):
        if rows > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        made(self, fast, rows, graph)

    monkeypatch.setattr(fast_executor.FastExecutor, "__init__", init)
    monkeypatch.setattr(backends, "select_backend", lambda *args, **kwargs: (backend, "fast CUDA path"))
    with load_engine(tmp_path, "fast", at_least=4) as engine:
        assert engine.executor.rows == 2 and engine.note.endswith("fast CUDA path; 4 rows asked, 2 fit")
        assert engine.generate([PieceRequest(None, GenerationConfig(seed=1, max_patches=4))])[0].patches == 4
    with pytest.raises(NotaGenError, match="^4 rows do not fit on cpu.*--rows 2"):
        load_engine(tmp_path, "fast", rows=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_short_of_memory_gets_fewer_rows_or_a_sentence():
    """A GPU that other work fills: the default rows are those its free memory holds, rows that do
    not fit are refused in one sentence saying what to do, and the failed attempt leaves nothing
    behind (the same rows load once the memory is back)."""
    from notagen_trt.config import ModelConfig
    from notagen_trt.export.model import NotaGenModel

    torch.manual_seed(0)  # rows of 4 MB: well above the allocator's 2 MB rounding
    network = NotaGenModel(ModelConfig(hidden_size=256, patch_num_layers=4, char_num_layers=1, patch_length=1024))
    backend = FastBackend(network, "cuda", "fp16")
    row = backend.row_bytes()
    assert row > 4 << 20

    def hog(leave: int) -> torch.Tensor:
        return torch.empty(backend.free_bytes(collect=True) - leave, dtype=torch.uint8, device="cuda")

    # In two steps: the driver's own bookkeeping for a huge allocation takes some of the memory.
    hogs = [hog(backend.HEADROOM + (64 << 20)), hog(backend.HEADROOM + int(5.5 * row))]
    assert backend.default_rows == 5, (backend.free_bytes(collect=True) - backend.HEADROOM) / row
    request = [PieceRequest(None, GenerationConfig(seed=1, max_patches=10))]
    assert Engine(backend.executor(backend.default_rows)).generate(request)[0].patches > 0
    del hogs
    backend.free_bytes(collect=True)  # the engine above, collected
    allocated = torch.cuda.memory_allocated()
    hogs = hog(64 << 20)  # 64 rows need 256 MB
    with pytest.raises(NotaGenError, match=r"64 rows do not fit on cuda.*--rows \d+"):
        backend.executor(64)
    del hogs
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() == allocated
    assert Engine(backend.executor(64)).generate(request)[0].patches > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for graph capture")
def test_engines_on_two_threads_capture_side_by_side(trained):
    """A service runs one engine per GPU (two GPUs where there are), each on its own thread: the
    second engine's graph must be captured on its own GPU, and running side by side changes no piece."""
    import threading

    devices = [f"cuda:{i % torch.cuda.device_count()}" for i in range(2)]
    requests = [PieceRequest(None, GenerationConfig(seed=s, max_patches=30)) for s in range(4)]
    engines = [Engine(FastBackend(copy.deepcopy(trained), d, "fp32").executor(4)) for d in devices]
    want = Engine(FastBackend(copy.deepcopy(trained), devices[0], "fp32").executor(4)).generate(requests)  # alone
    results: dict[int, list] = {}
    go = threading.Barrier(2)

    def run(i: int) -> None:
        go.wait()
        results[i] = [p.text for p in engines[i].generate(requests)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: [p.text for p in want], 1: [p.text for p in want]}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the Triton sampler")
def test_triton_sampler_matches_numpy_sampler():
    from notagen_trt.fastpath.sampler_kernel import sample_into

    logits, u = sampler_case(256, 1)
    mixed = [SAMPLER_PARAMS[i % 2] for i in range(256)]
    for params in (*([p] * 256 for p in SAMPLER_PARAMS), mixed):
        tokens = torch.zeros(256, 4, dtype=torch.long, device="cuda")
        forced = torch.full((256, 4), 42, dtype=torch.long, device="cuda")
        mask = torch.zeros(256, 4, dtype=torch.bool, device="cuda")
        mask[::9, 2] = True
        sample_into(torch.from_numpy(logits).cuda(), torch.from_numpy(u).cuda(), forced[:, 2], mask[:, 2],
                    tokens[:, 2], tuple(t.cuda() for t in row_params(params)))
        sampled = np.array([sample(logits[i], u[i], p) for i, p in enumerate(params)])
        want = np.where(mask[:, 2].cpu().numpy(), 42, sampled)
        assert np.array_equal(tokens[:, 2].cpu().numpy(), want)

