"""What generate leaves for a musician: files that never overwrite an earlier, different piece,
a score preview with every page, part names without stray whitespace, and an exit status that
says when no score could be written."""

import json
import re

import pytest
from test_reliability import run_cli

from notagen_trt.cli import main
from notagen_trt.runtime.outputs import write_piece

BACH = ["--period", "Baroque", "--composer", "Bach, Johann Sebastian", "--instrumentation"]


def _generate(capsys, tiny_dir, out, *argv):
    rc = main(["generate", "--model", str(tiny_dir / "onnx"), "--max-patches", "2", "--formats", "abc", "--json",
               "--out", str(out), *argv])
    return rc, json.loads(capsys.readouterr().out)


def test_different_prompts_with_the_same_seeds_do_not_collide(capsys, tiny_dir, tmp_path):
    for instrumentation in ("Choral", "Keyboard"):
        rc, summary = _generate(capsys, tiny_dir, tmp_path, *BACH, instrumentation, "--num-pieces", "2")
        assert rc == 0 and summary["pieces"][0]["prompt"]["instrumentation"] == instrumentation
    names = sorted(p.name for p in tmp_path.glob("*.abc"))
    assert names == sorted(f"piece_Baroque_Bach-Johann-Sebastian_{i}_seed{s}.abc"
                           for i in ("Choral", "Keyboard") for s in (0, 1))
    for name in names:  # each file says how it was made
        assert (tmp_path / name).read_text().startswith(f"% notagen-trt: prompt Baroque / Bach, Johann Sebastian / "
                                                        f"{name.split('_')[3]}; seed {name[-5]};")


def test_a_rerun_never_replaces_a_different_earlier_piece(capsys, tiny_dir, tmp_path):
    """Same name, same tune (a rerun with identical settings and model): rewritten in place. Same
    name, another tune (another model or backend, or a hand-edited file): the new one gets _2."""
    _generate(capsys, tiny_dir, tmp_path)
    first = tmp_path / "piece_seed0.abc"
    tune = first.read_text()
    _generate(capsys, tiny_dir, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piece_seed0.abc"]
    first.write_text("% my edited version\n" + tune)
    rc, summary = _generate(capsys, tiny_dir, tmp_path)
    assert rc == 0 and summary["pieces"][0]["files"]["abc"] == str(tmp_path / "piece_seed0_2.abc")
    assert first.read_text() == "% my edited version\n" + tune
    assert (tmp_path / "piece_seed0_2.abc").read_text() == tune


def test_generate_takes_a_checkpoint_file(capsys, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc = main(["generate", "--model", str(tiny_dir / "tiny.pth"), "--backend", "ort-cpu", "--max-patches", "2",
               "--formats", "abc", "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "piece_seed0.abc").is_file()
    assert list((tmp_path / "cache" / "notagen-trt").glob("tiny-*/manifest.json"))  # exported once, cached


def test_no_score_for_any_piece_is_exit_status_1(capsys, tiny_dir, tmp_path, monkeypatch):
    from notagen_trt.runtime import abcio

    def broken(_):
        raise ValueError("abc2xml could not convert the tune: boom")

    monkeypatch.setattr(abcio, "to_musicxml", broken)
    rc = main(["generate", "--model", str(tiny_dir / "onnx"), "--max-patches", "2", "--num-pieces", "2", "--json",
               "--out", str(tmp_path)])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert rc == 1 and summary["unconverted"] == 2 and not summary["interrupted"]
    assert "no MusicXML: abc2xml could not convert" in summary["pieces"][0]["errors"]["musicxml"]
    assert captured.err.strip().splitlines() == [
        "notagen-trt generate: error: 2 of 2 pieces have only their .abc (seed 0: no MusicXML: abc2xml could not "
        "convert the tune: boom)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piece_seed0.abc", "piece_seed1.abc"]


def test_unknown_format_is_one_line(capsys, tiny_dir, tmp_path):
    rc, err = run_cli(capsys, "generate", "--model", str(tiny_dir / "onnx"), "--formats", "abc,pdf",
                      "--out", str(tmp_path))
    assert rc == 2 and err.strip().splitlines() == [
        "notagen-trt generate: error: unknown --formats pdf; choose from abc,musicxml,midi,svg"]


def test_the_score_preview_shows_every_page(tmp_path):
    """48 bars do not fit one verovio page: every page is stacked into the one .svg."""
    pytest.importorskip("verovio")
    bars = "".join("[V:1]c2 d2 e2 f2|[V:2]C,8|\n" for _ in range(48))
    abc = 'X:1\nL:1/8\nM:4/4\nK:C\nV:1 treble nm="Violin"\nV:2 bass nm="Cello"\n' + bars
    files, errors = write_piece(tmp_path, "long", abc, ("abc", "svg"))
    assert not errors and set(files) == {"abc", "svg"}
    svg = (tmp_path / "long.svg").read_text()
    assert len(re.findall(r'class="measure"', svg)) == 48
    assert svg.count("<svg ") >= 3  # the page holder and at least two pages
    import xml.dom.minidom

    xml.dom.minidom.parseString(svg)  # well-formed


def test_the_model_a_piece_names_does_not_depend_on_how_its_path_is_spelt(tmp_path, monkeypatch):
    """The CLI, the service, the page and loadtest --check write the same first line for the same
    model, whichever path each was given."""
    from notagen_trt.demo import DEMO_CHECKPOINT, demo_model_dir
    from notagen_trt.runtime.engine import model_label

    cache = demo_model_dir()
    assert {model_label(m) for m in (None, cache, cache / "patch_engine.onnx", DEMO_CHECKPOINT)} == {"demo"}
    variant = tmp_path / "demo-int8wo"
    variant.mkdir()
    monkeypatch.chdir(tmp_path)
    assert {model_label(m) for m in (variant, "demo-int8wo", "./demo-int8wo/")} == {"demo-int8wo"}
    monkeypatch.chdir(variant)
    assert model_label(".") == "demo-int8wo"


def test_end_repeats_without_starts_repeat_their_own_bars_and_convert_fast():
    """A generated tune's `:|` with no `|:` repeats the bars since the last `:|` (music21 went back
    to the start each time: a 25-bar chorale with ten of them became 2,457 bars and two minutes of
    MIDI). Four bars, each section ended by `:|`: 2 + 1 + 1 bars repeated, 8 in all."""
    import time

    import music21

    from notagen_trt.runtime import abcio
    from notagen_trt.runtime.outputs import _open_each_repeat, convert

    tune = "X:1\nL:1/4\nM:4/4\nK:C\nV:1\n[V:1]C D E F|G A B c:|[V:1]c B A G:|[V:1]F E D C:|]\n"
    score = music21.converter.parse(abcio.to_musicxml(tune), format="musicxml")
    _open_each_repeat(score)
    assert len(score.expandRepeats().parts[0].getElementsByClass("Measure")) == 8
    sections = "".join(f"[V:1]{'C D E F|' * 2}:|\n" for _ in range(12))  # 24 bars, twelve end repeats
    start = time.perf_counter()
    made, errors = convert(f"X:1\nL:1/4\nM:4/4\nK:C\nV:1\n{sections}", ["midi"])
    assert not errors and made["midi"].startswith(b"MThd") and time.perf_counter() - start < 20
