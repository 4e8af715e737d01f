"""The engine and the published rules: reference modes agree, each rule of PieceState holds, and
in-flight batching writes the pieces one row writes, whatever the rows, order or cancellations."""

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BACH

from notagen_trt.config import BOS_ID, EOS_ID, PAD_ID
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime import codec
from notagen_trt.runtime.engine import Engine, PieceRequest, generate
from notagen_trt.runtime.piece import BarSplitter, Decision, GenerationConfig, PieceState
from notagen_trt.runtime.prompts import resolve_prompt
from notagen_trt.runtime.sampling import SamplingParams


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_published_and_cached_modes_write_identical_pieces(trained, seed):
    config = GenerationConfig(seed=seed, max_patches=120)
    prompt = resolve_prompt(*BACH)
    a = ReferenceBackend(trained, "published").generate(prompt, config)
    b = ReferenceBackend(trained, "cached").generate(prompt, config)
    assert a.text == b.text and a.patches == b.patches and a.stop_reason == b.stop_reason
    assert a.text.startswith("".join(prompt.lines()))
    assert "[r:0/" in a.text  # the first body patch was forced


@pytest.mark.parametrize("seed", [3, 4])
def test_context_halving_keeps_generating(trained, seed):
    """A loop PATCH_LENGTH of 22 (below the model's 32) forces rebuilds within one short piece."""
    config, prompt = GenerationConfig(seed=seed, max_patches=150), resolve_prompt(*BACH)
    cached = generate(ReferenceBackend(trained, "cached").executor(), prompt, config, 22)
    published = generate(ReferenceBackend(trained, "published").executor(), prompt, config, 22)
    assert cached.rebuilds >= 1
    assert cached.patches > 22 - 15  # more patches than the context holds beside the header
    assert published.text == cached.text and published.rebuilds == cached.rebuilds


def test_forced_length_prefix(trained):
    piece = ReferenceBackend(trained, "cached").generate(resolve_prompt(*BACH), GenerationConfig(seed=0, bars=7, max_patches=40))
    body = [line for line in piece.text.splitlines() if line.startswith("[r:")]
    assert body and body[0].startswith("[r:0/7]")


def test_limits_end_generation(trained):
    backend = ReferenceBackend(trained, "cached")
    piece = backend.generate(None, GenerationConfig(seed=0, max_patches=5))
    assert (piece.patches, piece.stop_reason) == (5, "max_patches")
    piece = backend.generate(None, GenerationConfig(seed=0, max_chars=40))
    assert piece.stop_reason == "max_chars" and 40 < len(piece.text) <= 56


def test_seeds_differ_and_repeat(trained):
    backend = ReferenceBackend(trained, "cached")
    config = GenerationConfig(seed=5, max_patches=30)
    assert backend.generate(None, config).text == backend.generate(None, config).text
    texts = {backend.generate(None, GenerationConfig(seed=s, max_patches=30)).text for s in range(6)}
    assert len(texts) > 1


def test_invalid_generation_settings_are_rejected():
    for bad in ({"seed": -1}, {"max_patches": 0}, {"max_seconds": float("nan")}, {"max_seconds": float("inf")},
                {"bars": -1}):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)
    # Types too, where the library takes them (a float seed once ended every piece on the engine's thread).
    for bad, says in (({"seed": 1.5}, "seed must be a whole number"), ({"seed": "3"}, "seed must be a whole number"),
                      ({"max_patches": 2.5}, "max_patches must be a whole number"), ({"bars": 2.5}, "bars must be"),
                      ({"sampling": {"top_k": 3}}, "sampling must be a SamplingParams"),
                      ({"max_seconds": "60"}, "max_seconds must be a number"),
                      ({"seed": None}, "seed must be a whole number"), ({"seed": True}, "seed must be a whole number"),
                      ({"meter": 3}, "meter must be a string"), ({"key": 2}, "key must be a string")):
        with pytest.raises(ValueError, match=says):
            GenerationConfig(**bad)
    for bad, says in (({"top_k": "9"}, "top_k must be a whole number"), ({"top_p": "0.9"}, "top_p must be a number"),
                      ({"temperature": None}, "temperature must be a number")):
        with pytest.raises(ValueError, match=says):
            SamplingParams(**bad)
    from notagen_trt.errors import NotaGenError

    with pytest.raises(NotaGenError, match="are strings"):
        resolve_prompt(1, 2, 3)
    assert GenerationConfig(seed=np.int64(7), max_patches=np.int32(9)).seed == 7  # numpy's ints are ints
    assert type(GenerationConfig(seed=np.int64(7)).seed) is int
    with pytest.raises(ValueError, match="config must be a GenerationConfig"):
        PieceRequest(None, {"seed": 1})
    with pytest.raises(ValueError, match="prompt must be a Prompt"):
        PieceRequest(BACH)
    with pytest.raises(ValueError):
        ReferenceBackend(torch.nn.Module(), "fast")


# ---- PieceState: one test per published rule ---------------------------------------------------
def _patch(text: str) -> np.ndarray:
    """A sampled patch as an executor returns it: bos, the characters, eos, padding."""
    ids = [BOS_ID, *map(ord, text), EOS_ID][:16]
    return np.array(ids + [PAD_ID] * (16 - len(ids)), dtype=np.int64)


def _state(**config) -> PieceState:
    state = PieceState(resolve_prompt(*BACH), GenerationConfig(**config), patch_length=64)
    state.context()
    return state


def test_rule_one_uniform_per_drawn_character():
    state = _state(seed=7)
    rng = np.random.default_rng(7)
    request = state.request()
    assert request.prefix == [] and request.uniforms.tolist() == rng.random(16).tolist()


def test_rule_first_body_patch_is_sampled_again_with_the_forced_prefix():
    state = _state(bars=5)
    assert state.take(_patch("[r:3/2][V:1]ab")) is Decision.RESAMPLE
    request = state.request()
    assert codec.decode_patch(request.prefix) == "[r:0/5]" and request.uniforms[:7].tolist() == [0.0] * 7
    assert state.take(_patch("[r:0/5][V:1]ab|")) is Decision.ACCEPT
    assert state.piece.text.endswith("[r:0/5][V:1]ab|") and state.piece.patches == 1
    assert state.take(_patch("[r:1/4][V:1]c|")) is Decision.ACCEPT  # only the first body patch is forced


def test_rule_eos_patch_ends_the_piece():
    state = _state()
    eos = np.array([BOS_ID, EOS_ID] + [PAD_ID] * 14)
    assert state.take(eos) is Decision.STOP
    assert state.piece.complete and state.piece.stop_reason == "eos" and state.piece.patches == 1


@pytest.mark.parametrize("limit, reason", [({"max_patches": 2}, "max_patches"), ({"max_chars": 50}, "max_chars")])
def test_rule_limits_stop_after_the_patch_that_reaches_them(limit, reason):
    state = _state(**limit)
    decisions = [state.take(_patch("L:1/8\n")) for _ in range(3)]
    assert Decision.STOP in decisions and state.piece.stop_reason == reason


def test_rule_seconds_limit():
    state = _state(max_seconds=1e-9)
    assert state.take(_patch("L:1/8\n")) is Decision.STOP and state.piece.stop_reason == "max_seconds"


def test_rule_a_full_context_is_halved():
    state = PieceState(None, GenerationConfig(), patch_length=6)
    state.context()  # the bos patch
    state.in_body = True
    decisions = [state.take(_patch(f"[V:1]a{i}b|\n")) for i in range(5)]
    assert decisions == [Decision.ACCEPT] * 4 + [Decision.RELOAD] and state.piece.rebuilds == 1
    patches = state.context()  # bos + the last half (2) of the 5 body lines, the last one left open
    assert [codec.decode_patch(p) for p in patches[1:]] == ["[V:1]a3b|\n"] and not state.done
    assert codec.decode_patch(state.request().prefix) == "[V:1]a4b|\n"


def test_rule_open_bar_after_a_rebuild_is_continued_not_repeated():
    state = PieceState(None, GenerationConfig(), patch_length=64, text="L:1/8\n[V:1]abc")
    state.context()
    assert codec.decode_patch(state.request().prefix) == "[V:1]abc"  # the open bar is forced
    state.take(_patch("[V:1]abcd|"))
    assert state.piece.text == "L:1/8\n[V:1]abcd|"  # its characters are not added twice


def test_rule_a_context_that_cannot_be_halved_stops():
    state = PieceState(None, GenerationConfig(), patch_length=3)
    state.context()
    decisions = [state.take(_patch("L:1/8\n")) for _ in range(2)]
    assert decisions[-1] is Decision.STOP and state.piece.stop_reason == "context_full"


def test_bar_splitter_streams_closed_bars_and_the_rest():
    splitter = BarSplitter()
    assert splitter.feed("[V:1]ab|cd|e") == ["[V:1]ab"]
    assert splitter.feed("f|\n[V:1]g") == ["|cd", "|ef|\n"]
    assert splitter.flush() == ["[V:1]g"] and splitter.flush() == []
    # A header line is one event, its barlines too (%%score groups voices with them).
    assert splitter.feed("%%score { 1 | 2 }\nL:1/8\n%%sco") == ["%%score { 1 | 2 }\n", "L:1/8\n"]
    assert splitter.feed("re [ 1 | 2 ]\n") == ["%%score [ 1 | 2 ]\n"]


# ---- the engine ----------------------------------------------------------------------------------
def test_bar_events_stream_the_whole_piece(trained):
    prompt = resolve_prompt(*BACH)
    bars, kinds = [], []

    def listen(event):
        kinds.append(event.kind)
        if event.kind == "bar":
            bars.append(event.text)

    engine = Engine(ReferenceBackend(trained, "cached").executor())
    (piece,) = engine.generate([PieceRequest(prompt, GenerationConfig(seed=1, max_patches=60))], listen)
    assert "".join(bars) == piece.text[len("".join(prompt.lines())) :]
    assert len(bars) > 3 and kinds[-1] == "done" and kinds.count("done") == 1
    for bar in bars[:-1]:  # each one bar segment of the codec (a header line or one voice's bar)
        assert "\n" not in bar[:-1]
        assert codec.split_bars(bar) == [bar] or (bar.endswith("\n") and "[V:" not in bar)


def _mixed_requests() -> list[PieceRequest]:
    """8 pieces of different prompts, seeds, settings and limits."""
    bach, chopin = resolve_prompt(*BACH), resolve_prompt("Romantic", "Chopin, Frederic", "Keyboard")
    cool = SamplingParams(top_k=0, top_p=0.5, temperature=0.7)
    configs = [GenerationConfig(seed=0, max_patches=12), GenerationConfig(seed=1, max_patches=90),
               GenerationConfig(seed=2, sampling=cool, max_patches=40), GenerationConfig(seed=3, bars=4, max_patches=50),
               GenerationConfig(seed=4, max_patches=7), GenerationConfig(seed=5, max_patches=150),
               GenerationConfig(seed=6, max_patches=30), GenerationConfig(seed=7, max_patches=60)]
    return [PieceRequest(bach if i % 3 else chopin if i % 2 else None, c, tag=i) for i, c in enumerate(configs)]


def test_in_flight_pieces_equal_one_row_pieces(trained):
    """3 rows, 8 pieces: rows are reused as pieces end, one piece halves its context (PATCH_LENGTH
    22), one is cancelled mid-piece; every finished piece is the one a one-row engine writes."""
    backend = ReferenceBackend(trained, "cached")
    requests = _mixed_requests()
    one_row = Engine(backend.executor(1), patch_length=22).generate(requests)
    engine = Engine(backend.executor(3), patch_length=22)
    handles = {}

    def cancel_piece_six(event):
        if event.handle.request.tag == 6 and event.kind == "patch" and event.handle.piece.patches == 5:
            event.handle.cancel()

    finished_order = []
    for handle in engine.run(reversed(requests), cancel_piece_six):  # arrival order reversed too
        handles[handle.request.tag] = handle
        finished_order.append(handle.request.tag)
    assert sorted(handles) == list(range(8)) and len(finished_order) == 8
    assert finished_order != sorted(finished_order, reverse=True)  # rows freed and refilled out of order
    cancelled = handles[6].piece
    assert cancelled.stop_reason == "cancelled" and cancelled.patches == 5
    assert one_row[6].text.startswith(cancelled.text)
    for i, piece in enumerate(one_row):
        if i != 6:
            got = handles[i].piece
            assert (got.text, got.patches, got.stop_reason, got.rebuilds) == (
                piece.text, piece.patches, piece.stop_reason, piece.rebuilds)
    assert any(p.rebuilds for p in one_row)  # the halving path ran
    assert {p.stop_reason for p in one_row} >= {"max_patches"}
    assert engine.active == 0 and engine.stats.finished == 8


@pytest.mark.parametrize("lanes", [1, 2])
def test_requests_are_taken_only_when_a_row_is_free(trained, lanes):
    """Two rows, one lane or two (one row each): memory does not grow with K."""
    executor = ReferenceBackend(trained, "cached").executor(2) if lanes == 1 else _lanes(trained, 1, 1)[0]
    engine = Engine(executor)
    taken = []

    def requests():
        for seed in range(5):
            taken.append(seed)
            yield PieceRequest(None, GenerationConfig(seed=seed, max_patches=3))

    run = engine.run(requests())
    next(run)
    # Two rows busy and one piece waiting; with lanes, each lane's next piece, one pulled ahead of its lane.
    assert len(taken) <= 2 + lanes
    assert len(list(run)) == 4


def test_background_engine_serves_submissions_from_threads(trained):
    backend = ReferenceBackend(trained, "cached")
    want = [backend.generate(None, GenerationConfig(seed=s, max_patches=20)).text for s in range(4)]
    with Engine(backend.executor(2)).start() as engine:
        handles = [None] * 4

        def submit(i):
            handles[i] = engine.submit(PieceRequest(None, GenerationConfig(seed=i, max_patches=20)))

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [h.wait(60).text for h in handles] == want
        waiting = engine.submit(PieceRequest(None, GenerationConfig(seed=9)))
        waiting.cancel()
        assert waiting.wait(60).stop_reason == "cancelled"
        with pytest.raises(RuntimeError, match="steps on its own thread"):  # two threads would step its rows
            engine.generate([PieceRequest(None, GenerationConfig(seed=1, max_patches=2))])


def test_wait_says_when_it_cannot_return_a_finished_piece(trained):
    """wait() returns only a finished piece: past its timeout a TimeoutError (the piece goes on),
    and at once a RuntimeError on an engine nothing steps (it would block for ever)."""
    backend = ReferenceBackend(trained, "cached")
    idle = Engine(backend.executor(1))
    handle = idle.submit(PieceRequest(None, GenerationConfig(seed=0, max_patches=3)))
    with pytest.raises(RuntimeError, match="engine.start"):
        handle.wait(60)
    while not handle.done:  # stepped by the caller, the piece ends as ever
        idle.step()
    assert handle.wait().patches == 3
    with Engine(backend.executor(1)).start() as engine:
        engine.on_step.append(lambda *_: time.sleep(0.01))  # the piece (14 patches, then eos) outlasts the wait
        long = engine.submit(PieceRequest(None, GenerationConfig(seed=0, max_patches=400)))
        with pytest.raises(TimeoutError, match="has not ended"):
            long.wait(0.01)
        assert not long.done
        long.cancel()
        assert long.wait(60).stop_reason == "cancelled"


def test_a_request_the_vocabulary_cannot_hold_is_refused_where_it_is_made():
    """Text or prompt lines outside ASCII are a ValueError at PieceRequest, before the engine's
    thread (where it ended the pieces running beside it and never ended its own)."""
    from notagen_trt.runtime.prompts import Prompt

    with pytest.raises(ValueError, match="'é', which is not ASCII"):
        PieceRequest(None, GenerationConfig(), text="T:Café\nL:1/8\n")
    with pytest.raises(ValueError, match="prompt holds 'ř'"):
        PieceRequest(Prompt("Romantic", "Dvořák, Antonín", "Keyboard"))


def test_closing_from_a_listener_and_after_close(trained):
    """close() from a listener (the engine's own thread) ends every piece as cancelled once the
    step is over and closes the executor; run() and step() after close say so; a done listener
    has run when wait() returns, and one that raises there leaves the finished piece as it ended."""
    backend = ReferenceBackend(trained, "cached")
    seen = []

    def done_listener(event):
        if event.kind == "done":
            time.sleep(0.05)
            seen.append(event.handle.id)
            raise KeyError("after the end")

    with Engine(backend.executor(2)).start() as engine:
        first = engine.submit(PieceRequest(None, GenerationConfig(seed=0, max_patches=3)), done_listener)
        piece = first.wait(60)
        assert seen == [first.id] and piece.stop_reason == "max_patches" and not first.cancelled
        assert "after the end" in first.error
    closer = Engine(backend.executor(2))

    def close_on_third_patch(event):
        if event.kind == "patch" and event.handle.state.piece.patches == 3:
            closer.close()

    mine = closer.submit(PieceRequest(None, GenerationConfig(seed=4, max_patches=400)), close_on_third_patch)
    other = closer.submit(PieceRequest(None, GenerationConfig(seed=1, max_patches=400)))
    queued = [closer.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=400))) for s in (2, 3)]
    closer.start()
    for handle in (other, *queued, mine):
        assert handle.wait(60).stop_reason == "cancelled" and handle.cancelled
    for thread in closer._threads:
        thread.join(60)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        closer.step()
    with pytest.raises(RuntimeError, match="closed"):
        list(closer.run([PieceRequest()]))
    closer.close()  # again: nothing more to do


def test_a_piece_cancelled_while_waiting_leaves_the_queue_at_once(trained):
    """A waiting piece whose client left no longer counts as queued (a service's queue limit and
    readiness counted it until a row freed) and ends at the engine's next step, not when a row frees."""
    from notagen_trt.serve.pool import EnginePool

    engine = Engine(ReferenceBackend(trained, "cached").executor(1))
    engine.on_step.append(lambda *_: time.sleep(0.01))  # the running piece (14 patches, then eos) outlasts the test
    pool = EnginePool([engine], max_queue=2)
    try:
        running = pool.submit(PieceRequest(None, GenerationConfig(seed=0, max_patches=400)), lambda e: None)
        waiting = [pool.submit(PieceRequest(None, GenerationConfig(seed=s)), lambda e: None) for s in (1, 2)]
        assert pool.waiting() == 2 and pool.unready() == "the queue is full (2 pieces wait for a row)"
        for handle in waiting:
            handle.cancel()
        assert pool.waiting() == 0 and pool.unready() == ""
        assert all(h.wait(30).stop_reason == "cancelled" for h in waiting)
        assert not running.done  # ended by the next step, while the running piece goes on
    finally:
        pool.close()


def test_a_library_piece_is_saved_as_generate_writes_it(trained, tmp_path):
    """handle.abc() is the text generate writes (settings comment, post-processed tune, the note
    of a cut piece); handle.save() writes it under generate's file name, and the scores asked for."""
    from notagen_trt.runtime.postprocess import postprocess
    from notagen_trt.runtime.render import piece_abc

    prompt = resolve_prompt(*BACH)
    config = GenerationConfig(seed=3, max_patches=12)
    engine = Engine(ReferenceBackend(trained, "cached").executor(1))
    handle = next(engine.run([PieceRequest(prompt, config)]))
    abc = handle.abc()
    assert abc == piece_abc(prompt, config, handle.piece, engine.made_by)
    assert abc.startswith("% notagen-trt: prompt Baroque") and postprocess(handle.piece.text) in abc
    files, errors = handle.save(tmp_path / "out", formats=("abc", "musicxml"))
    assert Path(files["abc"]).name == "piece_Baroque_Bach-Johann-Sebastian_Choral_seed3.abc"
    assert Path(files["abc"]).read_text() == abc
    assert set(files) | set(errors) == {"abc", "musicxml"}  # a score is made or its failure said
    with pytest.raises(ValueError, match="unknown formats"):
        handle.save(tmp_path, formats=("pdf",))
    pending = Engine(ReferenceBackend(trained, "cached").executor(1)).submit(PieceRequest())
    with pytest.raises(RuntimeError, match="has not ended"):
        pending.abc()
    saved, refused = [], []

    def on_done(event):  # the natural place to save: the piece is whole there, and wait() returns it
        if event.kind == "patch" and event.handle.state.piece.patches == 1:
            try:
                event.handle.wait(1)
            except RuntimeError as exc:
                refused.append(str(exc))
        if event.kind == "done":
            saved.append((event.handle.wait().patches, event.handle.save(tmp_path / "listener", ("abc",))[0]))

    with Engine(ReferenceBackend(trained, "cached").executor(1)).start() as started:
        started.submit(PieceRequest(prompt, config), on_done).wait(60)
    assert saved and saved[0][0] == 12 and Path(saved[0][1]["abc"]).read_text() == abc.replace(
        engine.made_by, started.made_by)
    assert refused and "would hold up the engine" in refused[0]


def test_a_listener_that_raises_ends_its_own_piece_only(trained):
    backend = ReferenceBackend(trained, "cached")
    want = backend.generate(None, GenerationConfig(seed=1, max_patches=30)).text

    def faulty(event):
        if event.kind == "bar":
            raise KeyError("listener bug")

    with Engine(backend.executor(2)).start() as engine:
        bad = engine.submit(PieceRequest(None, GenerationConfig(seed=0, max_patches=30)), faulty)
        good = engine.submit(PieceRequest(None, GenerationConfig(seed=1, max_patches=30)), lambda event: None)
        assert good.wait(60).text == want and not good.error
        assert bad.wait(60).stop_reason == "cancelled" and "the listener raised KeyError" in bad.error


def test_a_backend_fault_ends_running_pieces_and_the_engine_keeps_serving(trained):
    backend = ReferenceBackend(trained, "cached")
    executor = backend.executor(1)
    real_sample, calls = executor.sample, []

    def flaky(requests):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_sample(requests)

    executor.sample = flaky
    with Engine(executor).start() as engine:
        first = engine.submit(PieceRequest(None, GenerationConfig(seed=0, max_patches=20)))
        assert first.wait(60).stop_reason == "error" and "device lost" in first.error
        second = engine.submit(PieceRequest(None, GenerationConfig(seed=1, max_patches=5)))
        assert second.wait(60).stop_reason == "max_patches"


def test_engine_rows_must_be_sensible():
    from notagen_trt.runtime.engine import load_engine

    for rows in (10_000, 0, -1):  # 0 is no way to ask for the default
        with pytest.raises(ValueError, match="rows must be in"):
            load_engine(backend="ort-cpu", rows=rows)
    with pytest.raises(ValueError, match="rows must be a whole number"):
        load_engine(backend="ort-cpu", rows="2")


def test_loop_length_never_exceeds_the_model(trained):
    engine = Engine(ReferenceBackend(trained, "cached").executor(), patch_length=10_000)
    assert engine.patch_length == trained.config.patch_length


# ---- lanes: rows an executor computes at the same time from threads of their own ----------------
class _Recorded:
    """Wraps a lane's executor: each sample call's thread and span (held ``hold`` seconds, the
    first ``held`` calls, so calls of two lanes that run at once are seen to overlap)."""

    def __init__(self, executor, hold: float = 0.0, held: int = 0, fail_at: int = 0) -> None:
        self.executor, self.hold, self.held, self.fail_at, self.calls = executor, hold, held, fail_at, []
        self.sample_real, executor.sample = executor.sample, self.sample

    def sample(self, requests):
        start = time.monotonic()
        if len(self.calls) == self.fail_at - 1:
            self.calls.append(None)
            raise RuntimeError("device lost")
        if len(self.calls) < self.held:
            time.sleep(self.hold)
        out = self.sample_real(requests)
        self.calls.append((threading.current_thread(), start, time.monotonic()))
        return out


def _lanes(trained, *rows, **recorded):
    from notagen_trt.runtime.executor import SideBySide

    backend = ReferenceBackend(trained, "cached")
    parts = [backend.executor(n) for n in rows]
    return SideBySide("lanes", parts), [_Recorded(p, **recorded) for p in parts]


def test_lanes_step_at_once_on_threads_of_their_own_and_write_the_one_row_pieces(trained):
    """Lanes of 1 and 2 rows under run(): each lane's calls on a thread of its own (not the
    caller's), the two lanes' calls overlapping, request k in lane k % 2 whichever thread runs
    first, listeners called one at a time; every piece is the one-row engine's."""
    requests = _mixed_requests()
    one_row = Engine(ReferenceBackend(trained, "cached").executor(1), patch_length=22).generate(requests)
    executor, recorded = _lanes(trained, 1, 2, hold=0.02, held=3)
    engine = Engine(executor, patch_length=22)
    assert engine.lane_rows == [1, 2]
    lane_of, inside, overlapping = {}, [], []

    def listener(event):
        overlapping.append(bool(inside))
        inside.append(1)
        time.sleep(0.001)
        lane_of.setdefault(event.handle.request.tag, threading.current_thread().name)
        inside.pop()

    handles = {h.request.tag: h for h in engine.run(requests, listener)}
    for i, piece in enumerate(one_row):
        got = handles[i].piece
        assert (got.text, got.patches, got.stop_reason, got.rebuilds) == (
            piece.text, piece.patches, piece.stop_reason, piece.rebuilds)
    assert lane_of == {i: f"notagen-lane-{i % 2}" for i in range(8)}
    assert not any(overlapping)  # never two listener calls at once
    threads = [{call[0] for call in r.calls} for r in recorded]
    assert all(len(t) == 1 for t in threads) and threads[0] != threads[1]
    assert threading.current_thread() not in threads[0] | threads[1]
    (_, a0, a1), (_, b0, b1) = recorded[0].calls[0], recorded[1].calls[0]
    assert a0 < b1 and b0 < a1  # the lanes' first calls ran at the same time
    assert engine.active == 0 and not engine._threads and engine.stats.finished == 8


def test_a_fault_in_one_lane_is_raised_by_run_after_every_lane_stopped(trained):
    executor, recorded = _lanes(trained, 1, 1, fail_at=3)
    engine = Engine(executor)
    with pytest.raises(RuntimeError, match="device lost"):
        list(engine.run(PieceRequest(None, GenerationConfig(seed=s, max_patches=40)) for s in range(4)))
    assert not engine._threads  # joined before the error reached here


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11+")
def test_when_several_lanes_fail_one_fault_is_raised_and_the_others_are_told_on_it(trained):
    executor, recorded = _lanes(trained, 1, 1, fail_at=1)
    both = threading.Barrier(2, timeout=30)
    for r in recorded:
        def sample(requests, failing=r.sample):
            both.wait()  # both lanes are inside their first call before either fails
            return failing(requests)
        r.executor.sample = sample
    engine = Engine(executor)
    with pytest.raises(RuntimeError, match="device lost") as raised:
        list(engine.run(PieceRequest(None, GenerationConfig(seed=s, max_patches=40)) for s in range(4)))
    assert raised.value.__notes__ == ["another lane failed too: RuntimeError: device lost"]
    assert not engine._threads


def test_background_lanes_serve_fail_alone_and_close_from_a_listener(trained):
    """start() steps each lane on a thread of its own: pieces from the queue go to whichever lane
    has a free row; a backend fault ends only that lane's piece; close() from a listener ends every
    piece as cancelled once the lanes' steps are over, and every lane thread ends."""
    backend = ReferenceBackend(trained, "cached")
    want = [backend.generate(None, GenerationConfig(seed=s, max_patches=20)).text for s in range(4)]
    executor, recorded = _lanes(trained, 1, 1)
    names = set()
    with Engine(executor).start() as engine:
        handles = [engine.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=20)),
                                 lambda e: names.add(threading.current_thread().name)) for s in range(4)]
        assert [h.wait(60).text for h in handles] == want
        assert names == {"notagen-engine-0", "notagen-engine-1"}
        recorded[1].fail_at = len(recorded[1].calls) + 1  # lane 1's next call fails
        lost = [engine.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=20))) for s in (0, 1)]
        failed = [h for h in lost if h.wait(60).stop_reason == "error"]
        assert len(failed) == 1 and "device lost" in failed[0].error
        other = next(h for h in lost if h is not failed[0])  # the other lane's piece, as ever
        assert other.piece.text == want[other.request.config.seed]
        assert engine.submit(PieceRequest(None, GenerationConfig(seed=2, max_patches=5))).wait(60).patches == 5

    closer = Engine(_lanes(trained, 1, 1)[0])

    def close_on_third_patch(event):
        if event.kind == "patch" and event.handle.state.piece.patches == 3:
            closer.close()

    mine = closer.submit(PieceRequest(None, GenerationConfig(seed=4, max_patches=400)), close_on_third_patch)
    others = [closer.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=400))) for s in (1, 2, 3)]
    closer.start()
    for handle in (*others, mine):
        assert handle.wait(60).stop_reason == "cancelled"
    for thread in closer._threads:
        thread.join(60)
        assert not thread.is_alive()
    assert closer._is_shut


def test_a_run_of_lanes_waits_for_its_caller_and_loses_no_request_when_left(trained):
    """While the caller is busy, at most a few pieces end ahead of it (memory stays flat however
    many are asked for); a caller that stops early leaves a piece pulled for a busy lane queued,
    and the next run ends it with its own."""
    ended = []
    listener = lambda e: ended.append(e.handle) if e.kind == "done" else None  # noqa: E731
    run = Engine(_lanes(trained, 1, 1)[0]).run(
        (PieceRequest(None, GenerationConfig(seed=s, max_patches=3)) for s in range(12)), listener)
    next(run)
    time.sleep(1.0)  # twelve 3-patch pieces take well under a second here
    assert len(ended) <= 1 + 2 + 2  # the one taken, the hand-over queue (a row each), one held by each lane
    run.close()

    # The trained model's pieces end by eos within 14-31 patches, so calls are slowed to keep
    # lane 0 busy with piece 0, and lane 1 with piece 3, while the caller leaves.
    executor, recorded = _lanes(trained, 1, 1, hold=0.05, held=10**9)
    recorded[1].hold = 0.02
    engine, started, ended = Engine(executor), set(), []

    def listener(event):
        started.add(event.handle.request.tag)
        if event.kind == "done":
            ended.append(event.handle)

    requests = iter([PieceRequest(None, GenerationConfig(seed=s, max_patches=400 if s in (0, 3) else 3), tag=s)
                     for s in range(12)])
    run = engine.run(requests, listener)
    first = [next(run)]  # piece 1: lane 0 is busy with piece 0, and lane 1 will be with piece 3
    deadline = time.monotonic() + 30
    while 3 not in started and time.monotonic() < deadline:  # lane 1 took request 3, pulling 2 for lane 0
        time.sleep(0.001)
    run.close()
    assert 2 not in started and engine.queued == 1  # pulled, not started: queued, not lost
    rest = list(engine.run(requests))
    unseen = [h for h in ended if h not in first + rest]  # ended while nobody listened
    assert sorted(h.request.tag for h in first + rest + unseen) == list(range(12))  # each once
    assert engine.active == engine.queued == 0


def test_close_from_the_listener_of_a_piece_a_lane_fault_ended(trained):
    """A lane's backend fault ends its piece; that piece's listener closing the engine ends every
    piece (no thread waits for another that waits for it) and every lane thread ends."""
    executor, recorded = _lanes(trained, 1, 1)
    engine = Engine(executor)

    def close_on_error(event):
        if event.kind == "done" and event.handle.error:
            engine.close()

    recorded[1].fail_at = 3
    handles = [engine.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=400)),
                             close_on_error if s == 1 else (lambda e: None)) for s in range(2)]
    engine.start()
    assert sorted(h.wait(60).stop_reason for h in handles) == ["cancelled", "error"]
    for thread in engine._threads:
        thread.join(60)
        assert not thread.is_alive()


def test_close_from_another_thread_while_a_run_of_lanes_waits_for_its_caller(trained):
    """The lanes wait for a caller that does not read; close() from elsewhere still returns, every
    piece that began ends, and the paused run then gives what had ended and stops."""
    engine, begun, done = Engine(_lanes(trained, 1, 1)[0]), set(), []

    def listener(event):
        begun.add(event.handle)
        if event.kind == "done":
            done.append(event.handle)

    run = engine.run((PieceRequest(None, GenerationConfig(seed=s, max_patches=3)) for s in range(40)), listener)
    first = next(run)
    time.sleep(1.0)  # the lanes fill the hand-over queue and wait
    for other in (engine.step, engine.start, lambda: next(engine.run([]))):  # the run's lanes own the rows
        with pytest.raises(RuntimeError, match="run"):
            other()
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive() and engine._is_shut
    rest, reader = [], threading.Thread(target=lambda: rest.extend(run))
    reader.start()
    reader.join(30)
    assert not reader.is_alive()
    assert set(done) == begun and len(done) < 40  # nothing left running; the run did not go on
    assert {first, *rest} <= set(done) and all(h.piece.stop_reason == "max_patches" for h in [first, *rest])


def test_a_piece_ends_with_its_lane_fault_even_when_the_backend_cannot_free_its_row(trained):
    """The backend fails a patch and then fails to free the row: the piece still ends with the
    fault (a waiter does not hang), the lane goes on serving, and closing the engine still ends
    every piece and closes every executor."""
    executor, recorded = _lanes(trained, 1, 1)

    def broken_free(row):
        raise RuntimeError("device lost")

    recorded[1].fail_at, recorded[1].executor.free = 3, broken_free
    closed = []
    for part in recorded:
        part.executor.close = lambda part=part: closed.append(part)
    with Engine(executor).start() as engine:
        handles = [engine.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=20))) for s in range(2)]
        assert sorted(h.wait(60).stop_reason == "error" for h in handles) == [False, True]
        assert ["device lost" in (h.error or "") for h in handles].count(True) == 1
        assert engine.submit(PieceRequest(None, GenerationConfig(seed=2, max_patches=5))).wait(60).patches == 5
        for part in recorded:  # pieces that are still being written when the engine closes
            part.hold, part.held = 0.05, 10**9
        long = [engine.submit(PieceRequest(None, GenerationConfig(seed=s, max_patches=400))) for s in (3, 4)]
        deadline = time.monotonic() + 30
        while engine.active < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
    # Closing frees both rows, one of them failing: both pieces end, and both executors close.
    assert [h.wait(60).stop_reason for h in long] == ["cancelled", "cancelled"] and closed == recorded


@pytest.mark.parametrize("lanes", [(2,), (1, 1)])
def test_generate_returns_its_own_pieces_and_ends_those_submitted_before(trained, lanes):
    """A piece submitted before generate() is ended by it (it takes the rows) but is not one of the
    pieces it returns: those are its requests', in their order."""
    executor = _lanes(trained, *lanes)[0] if len(lanes) > 1 else ReferenceBackend(trained, "cached").executor(2)
    engine = Engine(executor)
    earlier = engine.submit(PieceRequest(None, GenerationConfig(seed=9, max_patches=4)))
    pieces = engine.generate([PieceRequest(None, GenerationConfig(seed=s, max_patches=4)) for s in range(3)])
    want = ReferenceBackend(trained, "cached")
    assert [p.text for p in pieces] == [want.generate(None, GenerationConfig(seed=s, max_patches=4)).text
                                        for s in range(3)]
    assert earlier.done and earlier.piece.patches == 4
