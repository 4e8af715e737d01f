"""Bad input, untrusted files, interruptions and endless generation end in a clear message and a
safe state: one line on stderr, exit status 2, no traceback, nothing lost."""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notagen_trt.cli import main
from notagen_trt.config import VOCAB_SIZE, ModelConfig
from notagen_trt.errors import NotaGenError
from notagen_trt.runtime import codec
from notagen_trt.runtime.engine import generate
from notagen_trt.runtime.executor import StepExecutor, StepSession
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.outputs import write_piece
from notagen_trt.runtime.postprocess import postprocess
from notagen_trt.runtime.prompts import resolve_prompt

FUZZ_CASES = 300  # per fuzzed function; the closing note reports the total


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0]


def test_missing_and_corrupt_checkpoints(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "export", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")),
                          "nope.pth", "no such checkpoint")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(*run_cli(capsys, "export", "--checkpoint", str(junk), "--out", str(tmp_path / "o")),
                          "junk.pth", "corrupt or truncated")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert_one_line_error(*run_cli(capsys, "export", "--checkpoint", str(empty), "--out", str(tmp_path / "o")),
                          "empty.safetensors")
    assert not (tmp_path / "o").exists()  # the folder the failed export made is gone again
    (tmp_path / "mine").mkdir()
    assert_one_line_error(*run_cli(capsys, "export", "--checkpoint", str(empty), "--out", str(tmp_path / "mine")),
                          "empty.safetensors")
    assert (tmp_path / "mine").is_dir()  # one that was there before stays


def test_bars_past_the_demo_models_training_lengths_get_a_note(capsys, tmp_path):
    for bars, says in ((3, "shorter than any piece"), (100_000, "longer than any piece")):
        rc = main(["generate", "--bars", str(bars), "--max-patches", "2", "--formats", "abc",
                   "--out", str(tmp_path / str(bars))])
        assert rc == 0 and f"note: --bars {bars} is {says}" in capsys.readouterr().err


def test_files_that_are_no_model_are_refused_in_a_line_and_leave_nothing(capsys, tmp_path, monkeypatch):
    """`generate --model` on a file of another kind, or on a checkpoint that does not load: one
    line naming the file, and no half-made export in the user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    other = tmp_path / "weights.ckpt"
    other.write_bytes(b"x")
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(other), "--out", str(tmp_path / "g")),
                          str(other), "not a model", ".safetensors")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(junk), "--out", str(tmp_path / "g")),
                          "junk.pth", "corrupt or truncated")
    assert not any((tmp_path / "cache").rglob("junk-*"))


def test_checkpoint_matching_no_config(capsys, tmp_path):
    import torch

    path = tmp_path / "odd.pth"
    torch.save({"model": {"patch_level_decoder.patch_embedding.weight": torch.zeros(100, 2048),
                          "patch_level_decoder.base.wpe.weight": torch.zeros(8, 100)}}, path)
    assert_one_line_error(*run_cli(capsys, "export", "--checkpoint", str(path), "--out", str(tmp_path / "o")),
                          "odd.pth", "match no NotaGen config")


def test_corrupt_model_directory(capsys, tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir / "onnx", broken)
    graph = broken / "patch_decoder.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(broken), "--out", str(tmp_path / "g")),
                          "patch_decoder.onnx", "re-export")
    (broken / "manifest.json").write_text("{ not json")
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(broken), "--out", str(tmp_path / "g")),
                          "manifest.json")
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "g")),
                          "absent")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--composer", "Bach, Johan Sebastian", "--period", "Baroque", "--instrumentation", "Choral"],
         "did you mean 'Bach, Johann Sebastian'"),
        (["--period", "Baroque"], "give all three"),
        (["--seed", "-1"], "seed must be in"),
        (["--seed", str(2**63 - 2), "--num-pieces", "3"], "(piece 3's seed: --seed + 2)"),
        (["--num-pieces", "0"], "--num-pieces must be at least 1"),
        (["--bars", "-3"], "bars must be >= 0"),
        (["--max-patches", "0"], "--max-patches must be positive"),
        (["--max-seconds", "0"], "--max-seconds must be positive"),
        (["--top-p", "2"], "--top-p must be in (0, 1]"),
        (["--backend", "tensorrt-please"], "unknown backend"),
    ],
)
def test_invalid_values(capsys, tiny_dir, tmp_path, argv, needle):
    rc, err = run_cli(capsys, "generate", "--model", str(tiny_dir / "onnx"), "--out", str(tmp_path), *argv)
    assert_one_line_error(rc, err, needle)


def test_a_model_that_does_not_load_leaves_no_empty_out_folder(capsys, tmp_path):
    out = tmp_path / "new" / "pieces"
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(tmp_path / "absent"), "--out", str(out)),
                          "absent")
    assert not (tmp_path / "new").exists()  # nor the parent it made
    kept = tmp_path / "kept"
    kept.mkdir()
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(tmp_path / "absent"), "--out", str(kept)),
                          "absent")
    assert kept.is_dir()  # a folder the user made stays


def test_a_device_that_is_not_here_is_one_line_before_any_work(capsys, tmp_path):
    torch = pytest.importorskip("torch")

    out = tmp_path / "ref"
    assert_one_line_error(*run_cli(capsys, "reference", "--device", "gpu", "--out", str(out)), "--device gpu",
                          "cpu, cuda or cuda:N")
    assert_one_line_error(*run_cli(capsys, "train", "--device", "tpu", "--out", str(tmp_path / "m.pth")),
                          "--device tpu")
    if not torch.cuda.is_available():
        assert_one_line_error(*run_cli(capsys, "reference", "--device", "cuda", "--out", str(out)),
                              "no CUDA GPU", "--device cpu")
    assert not out.exists()  # refused before the output folder was made


def test_a_mistyped_backend_is_named_as_one_by_serve(capsys):
    # --gpus none: nothing would start even if the check let the name through
    assert_one_line_error(*run_cli(capsys, "serve", "--backend", "ort-cpux", "--gpus", "none"),
                          "unknown backend 'ort-cpux'")


def test_loadtest_without_a_service_or_with_an_unknown_output_is_one_line(capsys):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_one_line_error(*run_cli(capsys, "loadtest", "--url", f"http://127.0.0.1:{port}"),
                          "no service answers there", "notagen-trt serve")
    assert_one_line_error(*run_cli(capsys, "loadtest", "--outputs", "abc,pdf"), "unknown --outputs pdf")


def test_every_option_of_every_command_says_what_it_does():
    from notagen_trt.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [f"{name} {action.option_strings[0]}" for name, sub in commands.items() for action in sub._actions
              if action.option_strings and not action.help]
    assert len(commands) >= 13 and not silent, silent


def test_a_prompt_the_demo_model_barely_saw_gets_a_note(capsys, tmp_path):
    """The demo model saw one Chopin piece and 366 Bach chorales: a Chopin piece may never end."""
    from notagen_trt.corpus import trained_prompt_counts

    counts = trained_prompt_counts()
    assert counts[("Baroque", "Bach, Johann Sebastian", "Choral")] > 300
    bach = ("Baroque", "Bach, Johann Sebastian", "Choral")
    for prompt, noted in ((("Romantic", "Chopin, Frederic", "Keyboard"), True), (bach, False)):
        argv = ["generate", "--period", prompt[0], "--composer", prompt[1], "--instrumentation", prompt[2],
                "--max-patches", "3", "--formats", "abc", "--out", str(tmp_path / prompt[0])]
        rc, err = run_cli(capsys, *argv)
        assert rc == 0 and ("saw this prompt in" in err) == noted, err


def test_eval_refuses_data_that_is_not_abc(capsys, tmp_path):
    """Scored as if it were music otherwise (a bits/char of a text file, with no complaint)."""
    (tmp_path / "notes.abc").write_text("shopping list: milk, eggs\n")
    (tmp_path / "binary.abc").write_bytes(b"\xff\xfe\x00junk")
    for name, words in (("notes.abc", "no K: key field"), ("binary.abc", "not a text file")):
        assert_one_line_error(*run_cli(capsys, "eval", "--data", str(tmp_path / name)), name, words)


def test_eval_of_a_checkpoint_refuses_the_options_it_would_ignore(capsys):
    assert_one_line_error(*run_cli(capsys, "eval", "--checkpoint", "demo.pth", "--num-generated", "3"),
                          "--checkpoint scores bits/char in PyTorch only")


@pytest.mark.parametrize("argv, words", [(["generate", "--rows", "0"], "--rows"),
                                         (["generate", "--rows", "abc"], "--rows: must be a whole number 1 to 64"),
                                         (["export", "--layout", "engin", "--out", "x"], "invalid choice: 'engin'"),
                                         (["nosuch"], "invalid choice: 'nosuch'"),
                                         (["generate", "--nosuch"], "notagen-trt generate --help")])
def test_usage_errors_are_one_line_too(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and "--help" in err and len(err.strip().splitlines()) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("notagen-trt ")


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(NotaGenError):
        main(["--debug", "export", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")])
    with pytest.raises(NotaGenError):  # after the subcommand too
        main(["export", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o"), "--debug"])


class NeverEnding(StepSession):
    """A session whose model always writes 'a': no body, no EOS, ever."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def reset(self) -> None:
        pass

    def extend(self, patches):
        time.sleep(self.delay)
        return np.zeros(8, dtype=np.float32)

    def char_start(self, hidden, tokens):
        return self._logits()

    def char_step(self, token):
        return self._logits()

    def _logits(self):
        logits = np.full(VOCAB_SIZE, -30.0, dtype=np.float32)
        logits[ord("a")] = 30.0
        return logits


def _one_row(session: StepSession) -> StepExecutor:
    config = ModelConfig(hidden_size=64, patch_num_layers=1, char_num_layers=1, patch_length=10_000)
    return StepExecutor("never-ending", config, [session])


@pytest.mark.parametrize(
    "config, reason",
    [
        (GenerationConfig(max_patches=50), "max_patches"),
        (GenerationConfig(max_chars=300), "max_chars"),
        (GenerationConfig(), "context_full"),  # no body lines to keep: halving cannot help
    ],
)
def test_a_model_that_never_ends_still_stops(config, reason):
    piece = generate(_one_row(NeverEnding()), None, config, 64)
    assert piece.stop_reason == reason and not piece.complete
    assert piece.text.startswith("a" * 16)


def test_time_limit_stops_generation():
    piece = generate(_one_row(NeverEnding(delay=0.01)), None, GenerationConfig(max_seconds=0.2))
    assert piece.stop_reason == "max_seconds" and 0.2 <= piece.seconds < 2.0


def test_cut_short_piece_is_saved_and_marked(capsys, tiny_dir, tmp_path):
    rc = main(["generate", "--model", str(tiny_dir / "onnx"), "--max-patches", "3", "--out", str(tmp_path), "--json"])
    assert rc == 0
    text = (tmp_path / "piece_seed0.abc").read_text()
    assert text.startswith("% notagen-trt: prompt unconditional; seed 0;") and text.splitlines()[1] == "X:1"
    assert text.rstrip().endswith("% incomplete: generation stopped by max_patches after 3 patches")


def test_a_long_run_off_a_terminal_says_it_is_still_going(capsys, tiny_dir, tmp_path, monkeypatch):
    from notagen_trt.commands import generate as command

    monkeypatch.setattr(command._Progress, "HEARTBEAT", -1.0)  # a line after every patch, not every 30 s
    assert main(["generate", "--model", str(tiny_dir / "onnx"), "--max-patches", "3", "--out", str(tmp_path),
                 "--formats", "abc"]) == 0
    beats = [line for line in capsys.readouterr().err.splitlines() if line.startswith("generating:")]
    assert beats and beats[-1].startswith("generating: 0 of 1 pieces written, ") and "patches so far" in beats[-1]


def test_failed_conversion_keeps_the_abc(tmp_path, monkeypatch):
    from notagen_trt.runtime import abcio, outputs

    abc = "X:1\nL:1/8\nM:4/4\nK:C\nV:1\n[V:1]c8|\n"

    def broken(*_):
        raise ValueError("converter exploded")

    monkeypatch.setattr(outputs, "_svg", broken)
    files, errors = write_piece(tmp_path, "a", abc)
    assert set(files) == {"abc", "musicxml", "midi"} and "converter exploded" in errors["svg"]
    monkeypatch.setattr(abcio, "to_musicxml", broken)
    files, errors = write_piece(tmp_path, "b", abc)
    assert (tmp_path / "b.abc").read_text() == abc and set(files) == {"abc"}
    assert set(errors) == {"musicxml", "midi", "svg"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_killed_export_leaves_the_previous_model_intact(tiny_dir, tmp_path):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(tiny_dir / "onnx", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-m", "notagen_trt.cli", "export", "--checkpoint", str(tiny_dir / "tiny.pth"),
                             "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob(".export-*")):  # wait until it is writing
        time.sleep(0.02)
    assert list(out.glob(".export-*")), "the export never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before


def test_threads_through_one_ort_model_match_sequential_runs(tiny_dir):
    from notagen_trt.runtime.onnx_backend import OrtBackend

    backend = OrtBackend(tiny_dir / "onnx", "cpu", threads=1)
    configs = [GenerationConfig(seed=s, max_patches=25) for s in range(6)]
    sequential = [generate(backend.executor(), None, c).text for c in configs]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = generate(backend.executor(), None, configs[i]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(configs))] == sequential


ascii_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=400)
abc_like = st.lists(
    st.one_of(
        st.sampled_from(["X:1", "L:1/8", "M:4/4", "M:3/4", "K:G", "V:1", "V:2 bass", "%%score { 1 | 2 }",
                         "%%score ( 1 2", "%Baroque", "%end", "[r:0/3]", "[V:1]", "[V:2]", "|", "|]", "::", "|:",
                         ":|", "[|", "||", "z8", "x4", "c2 e2", "(3abc", "[CEG]2", "!fermata!", '"^text"', "\n"]),
        ascii_text,
    ),
    max_size=40,
).map("".join)


@settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(ascii_text, abc_like))
def test_fuzz_codec(text):
    patches = codec.encode_train(text)
    assert patches.shape[1] == 16 and patches.max() < VOCAB_SIZE
    header, body = codec.split_lines(text)
    if not (body and body[0].startswith("[r:")):
        body = codec.add_stream_prefixes(body)
    want = "".join(header + [b if b.endswith("\n") else b + "\n" for b in body])
    if chr(1) not in text and chr(2) not in text and chr(0) not in text:
        assert codec.decode(patches) == want
    full, prefix = codec.encode_generate(text)
    assert full.shape[1] == 16 and len(prefix) < 16
    if len(codec._patches_for(header, [], False)) + 2 <= 64:
        codec.encode_windows(text, 64)


@settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True)
@given(st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.none(), st.text(max_size=40)),
       st.one_of(st.none(), st.text(max_size=40)))
def test_fuzz_prompt_parser(period, composer, instrumentation):
    try:
        prompt = resolve_prompt(period, composer, instrumentation)
    except NotaGenError as exc:
        assert "\n" not in str(exc)
    else:
        assert prompt is None or len(prompt.lines()) == 3


@settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(abc_like, ascii_text))
def test_fuzz_postprocess(text):
    out = postprocess(text)
    assert out.startswith("X:1\n")
    assert not any(line.startswith("[r:") for line in out.splitlines())


def test_killed_build_leaves_the_previous_engine_intact(tiny_dir, tmp_path):
    """SIGKILL while the second graph builds: the first plan waits under a temporary name, so the
    previous engine's plans and manifest stay as they were and stay consistent."""
    import json

    from notagen_trt.engines.build import build_engines
    from notagen_trt.files import sha256_file
    from notagen_trt.engines.flavors import FLAVORS

    FLAVORS["rtx"].load()  # CI installs TensorRT-RTX; a missing install fails here, loudly

    out = tmp_path / "engine"
    build_engines(tiny_dir / "onnx", out, flavor="rtx")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-m", "notagen_trt.cli", "build", "--model", str(tiny_dir / "onnx"),
                             "--flavor", "rtx", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".patch_decoder.plan-*.tmp")):
        time.sleep(0.005)
    assert list(out.glob(".patch_decoder.plan-*.tmp")), "the first plan was never staged"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before
    manifest = json.loads((out / "manifest.json").read_text())
    for graph in manifest["graphs"].values():  # the surviving engine is still self-consistent
        assert sha256_file(out / graph["file"]) == graph["plan"]["sha256"]


def test_a_single_graph_file_stands_for_its_model_directory(capsys, tiny_dir, tmp_path):
    rc = main(["generate", "--model", str(tiny_dir / "onnx" / "char_decoder.onnx"), "--max-patches", "2",
               "--out", str(tmp_path), "--json"])
    assert rc == 0 and (tmp_path / "piece_seed0.abc").is_file()
    import shutil

    shutil.copytree(tiny_dir / "onnx", tmp_path / "model")
    stray = tmp_path / "model" / "stray.onnx"
    stray.write_bytes(b"")
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(stray), "--out", str(tmp_path / "g")),
                          "stray.onnx", "not a graph listed")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _wait_for_pieces(out, count: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if sum(1 for e in os.scandir(out) if e.name.endswith(".abc")) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} pieces were not written in {timeout} s (exit status {proc.poll()})")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc to read a process's RSS")
def test_many_pieces_run_in_bounded_memory_and_stop_cleanly_on_ctrl_c(tiny_dir, tmp_path):
    """`--num-pieces 100000`: requests are made as rows free up and nothing grows per piece, so
    the RSS after 200 pieces is within 10% of the RSS after 20 (the --json summary is streamed,
    not kept); Ctrl-C then leaves every written piece whole and ends in one line, status 130."""
    out = tmp_path / "pieces"
    out.mkdir()
    stdout, stderr = open(tmp_path / "stdout.txt", "w+"), open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "notagen_trt.cli", "generate", "--model", str(tiny_dir / "onnx"),
                             "--backend", "ort-cpu", "--num-pieces", "100000", "--max-patches", "2", "--formats", "abc",
                             "--json", "--out", str(out)], stdout=stdout, stderr=stderr,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            # a shell running the suite in the background ignores SIGINT for its children
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_pieces(out, 20, proc)
        early = _rss_kib(proc.pid)
        _wait_for_pieces(out, 200, proc)
        late = _rss_kib(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    print(f"RSS after 20 pieces {early / 1024:.1f} MiB, after 200 {late / 1024:.1f} MiB")
    assert late <= 1.10 * early
    stderr.seek(0)
    err = stderr.read()
    assert "Traceback" not in err and err.strip().splitlines() == ["notagen-trt generate: interrupted"]
    summary = json.loads((tmp_path / "stdout.txt").read_text())  # streamed, and closed on Ctrl-C
    assert summary["interrupted"] and len(summary["pieces"]) >= 200
    pieces = sorted(out.iterdir())
    assert 0 <= len(pieces) - len(summary["pieces"]) <= 1  # Ctrl-C may land between a write and its line
    assert not [p.name for p in pieces if p.name.startswith(".")]  # no half-written temporary file
    for piece in pieces:
        text = piece.read_text()
        assert text.startswith("% notagen-trt: prompt unconditional;") and "\nX:1\n" in text
        assert text.endswith("% incomplete: generation stopped by max_patches after 2 patches\n")


def test_the_writer_reports_every_written_piece_in_order_and_raises_the_first_failure():
    from notagen_trt.commands.generate import _Writer

    class Sink:
        def __init__(self):
            self.rows = []

        def piece_done(self, row):
            self.rows.append(row)

        add = piece_done

    def save(n):
        time.sleep(0.01 * (3 - n))  # the first piece's write is the slowest
        if n == 1:
            raise NotaGenError("piece 1: could not write")
        return n

    progress, summary = Sink(), Sink()
    writer = _Writer(save, progress, summary, limit=1)  # the queue waits at two pieces
    writer.submit(0)
    with pytest.raises(NotaGenError, match="piece 1"):  # raised at the next piece after it failed
        for n in (1, 2, 3):
            writer.submit(n)
            time.sleep(0.05)
    with pytest.raises(NotaGenError, match="piece 1"):
        writer.close()
    assert progress.rows == summary.rows and 0 in summary.rows and 1 not in summary.rows
    assert summary.rows == sorted(summary.rows)  # in the order the pieces ended
    from concurrent.futures import Future

    late = Future()
    late.set_result(99)
    writer.queued.append(late)
    writer.report()  # after close (the engine's last events, after the summary closed): nothing is reported
    assert 99 not in summary.rows


def test_tensorrt_asked_of_an_onnx_directory_says_first_what_this_machine_lacks(tiny_dir, monkeypatch):
    """`--backend tensorrt` on an ONNX directory: where no GPU could run an engine, that is the
    one line (not advice to build engines it could not run); with a GPU, the advice to build."""
    from notagen_trt.runtime import cuda
    from notagen_trt.runtime.backends import select_backend

    monkeypatch.setattr(cuda, "local_gpu", lambda: None)
    with pytest.raises(NotaGenError, match=r"^TensorRT runs on a CUDA GPU and (no CUDA GPU is visible|cuda-python).*"
                                           r"--backend ort-cpu"):
        select_backend(tiny_dir / "onnx", "tensorrt")
    monkeypatch.setattr(cuda, "local_gpu", lambda: {"name": "a GPU", "compute_capability": "8.9"})
    with pytest.raises(NotaGenError, match="an ONNX model directory; build engines with `notagen-trt build"):
        select_backend(tiny_dir / "onnx", "tensorrt")


def test_a_reader_that_goes_away_ends_the_command_quietly(capsys, monkeypatch):
    """`notagen-trt prompts | head`: the pipe closing is no error line ('a file: Broken pipe')."""
    import builtins

    def closed(*args, **kwargs):
        if kwargs.get("file") is None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(builtins, "print", closed)
    assert main(["prompts"]) == 141
    assert capsys.readouterr().err == ""


def test_a_missing_extra_met_late_is_one_line_naming_it(capsys, monkeypatch):
    """`serve` with only the [serve] extra met onnxruntime's absence deep in loading the model:
    a traceback and exit status 1. Now one line naming the package and the extra."""
    from notagen_trt.commands import prompts

    def needs_onnxruntime(args):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(prompts, "_cmd_prompts", needs_onnxruntime)
    rc, err = run_cli(capsys, "prompts")
    assert_one_line_error(rc, err, "needs the onnxruntime package", "[ort] extra")
