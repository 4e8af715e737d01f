"""Continuing a user's piece: an ABC, a MusicXML and a MIDI file of one held-out chorale, each
converted as the corpus was made; the output keeps the user's bars and adds at least 8; a file
longer than the context keeps its header and last bars; unreadable files fail in one line."""

import shutil

import music21
import pytest

from notagen_trt.calibration_data.prepare import CORPUS_ROOT, read_mxl
from notagen_trt.corpus import default_split
from notagen_trt.errors import NotaGenError
from notagen_trt.runtime import codec
from notagen_trt.runtime.abcio import to_musicxml
from notagen_trt.runtime.continuation import MARKER, parse_continuation, read_continuation
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.postprocess import postprocess

CHORALE = "bach-bwv102.7"  # held out; its source is bach/bwv102.7.mxl in music21's corpus


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The chorale as the user might have it: the corpus .abc, a .musicxml, an .mxl and a .mid."""
    d = tmp_path_factory.mktemp("user")
    source = CORPUS_ROOT / "bach/bwv102.7.mxl"
    shutil.copy(default_split("heldout") / f"{CHORALE}.abc", d / "chorale.abc")
    shutil.copy(source, d / "chorale.mxl")
    (d / "chorale.musicxml").write_bytes(read_mxl(source))
    score = music21.converter.parse(source)
    (d / "chorale.mid").write_bytes(music21.midi.translate.streamToMidiFile(score).writestr())
    return d


@pytest.fixture(scope="module")
def engine():
    from notagen_trt.runtime import load_engine

    with load_engine(backend="ort-cpu", rows=3) as e:
        yield e


def _bars(abc: str) -> list[str]:
    return [line for line in abc.splitlines(keepends=True) if line.startswith("[V:")]


def test_musicxml_is_converted_as_the_corpus_was(files):
    corpus = (files / "chorale.abc").read_text()
    header, body = codec.split_lines(corpus)
    for name in ("chorale.mxl", "chorale.musicxml"):
        cont = read_continuation(files / name)
        assert list(cont.body) == [codec.strip_stream_prefix(line) for line in body[:-1]]  # %end is not a bar
        assert list(cont.header) == header[3:]  # the prompt lines come from the request, not the file
    abc = read_continuation(files / "chorale.abc")
    assert abc.prompt is not None and abc.prompt.composer == "Bach, Johann Sebastian"  # the corpus file's own


@pytest.mark.slow
def test_abc_musicxml_and_midi_are_continued_after_the_users_bars(files, engine):
    from notagen_trt.runtime import PieceRequest
    from notagen_trt.runtime.render import piece_abc

    conts = [read_continuation(files / name) for name in ("chorale.abc", "chorale.musicxml", "chorale.mid")]
    assert conts[2].bars >= 8 and conts[2].field("M") == "4/4"
    config = GenerationConfig(seed=1, max_patches=400)
    pieces = engine.generate(PieceRequest(c.prompt, config, text=c.text(c.prompt, config)) for c in conts)
    for cont, piece in zip(conts, pieces):
        out = cont.mark(piece_abc(cont.prompt, config, piece, "test"))
        user = cont.user_bars()
        assert _bars(out)[: cont.bars] == user, cont.name  # the user's bars, unchanged, first
        marker = next(i for i, line in enumerate(out.splitlines()) if line.startswith(MARKER))
        assert out.splitlines()[marker - 1] == user[-1].rstrip("\n")  # the marker follows them
        assert len(_bars(out)) - cont.bars >= 8, (cont.name, piece.stop_reason)
        assert to_musicxml(out)  # the whole piece converts
    corpus = postprocess((files / "chorale.abc").read_text())
    assert conts[0].user_bars() == _bars(corpus)  # for the .abc: exactly the file's bars


@pytest.mark.slow
def test_a_file_longer_than_the_context_keeps_its_header_and_last_bars(engine):
    """A 429-bar quartet movement is past the demo model's 512 patches: it is halved to fit."""
    from notagen_trt.runtime import PieceRequest

    cont = read_continuation(default_split("heldout") / "beethoven-opus59no3-movement4.abc")
    config = GenerationConfig(seed=0, max_patches=20)
    (piece,) = engine.generate([PieceRequest(cont.prompt, config, text=cont.text(cont.prompt, config))])
    assert piece.stop_reason == "max_patches" and piece.rebuilds >= 1  # halved on loading, then it went on
    assert piece.text.startswith(cont.text(cont.prompt, config)[:-40])  # every bar of the file is kept


@pytest.mark.parametrize("name, data, says", [
    ("noise.mid", bytes(range(256)) * 4, "not a standard MIDI file"),
    ("broken.mid", b"MThd\x00\x00\x00\x06" + bytes(range(200)), "music21 could not read the MIDI file"),
    ("empty.abc", b"", "the file is empty"),
    ("blank.abc", b"\n\n  \n", "the file is empty"),
    ("words.abc", b"just some words\n", "no ABC tune in it"),
    ("rest.musicxml", b"""<?xml version="1.0"?><score-partwise version="3.1"><part-list><score-part id="P1">
<part-name>P</part-name></score-part></part-list><part id="P1"><measure number="1"><attributes><divisions>1</divisions>
<time><beats>4</beats><beat-type>4</beat-type></time></attributes><note><rest/><duration>4</duration></note></measure>
</part></score-partwise>""", "holds no notes"),
    ("page.musicxml", b"<html><body>hello</body></html>", "not a MusicXML score"),
    ("archive.mxl", b"PK\x03\x04 not really", "not a compressed MusicXML"),
    ("tune.txt", b"X:1\nK:D\nabc|\n", "cannot continue a .txt file"),
])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, name, data, says):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(NotaGenError) as err:
        read_continuation(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_voices_that_do_not_line_up_are_said_so_with_what_to_give_for_midi(files, monkeypatch):
    """abctoolkit's alignment check raises IndexError on voices of unequal length (a MIDI file's
    guessed bars): the message says what is wrong, and for MIDI what to continue instead."""
    import abctoolkit.check

    def trips(lines):
        raise IndexError("list index out of range")

    monkeypatch.setattr(abctoolkit.check, "check_alignment_unrotated", trips)
    for name in ("chorale.mid", "chorale.musicxml"):
        with pytest.raises(NotaGenError) as err:
            read_continuation(files / name)
        assert "its voices have different numbers of bars" in str(err.value)
        assert ("continue the piece's .musicxml or .abc" in str(err.value)) == name.endswith(".mid")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(NotaGenError, match="no such file"):
        read_continuation(tmp_path / "gone.mid")


def test_plain_abc_goes_through_music21_and_xml2abc():
    tune = b"X:1\nT:Tune\nM:6/8\nL:1/16\nK:D\n|:A2|d2f2a2 a2f2d2|e2c2e2 A2B2c2|d2f2a2 a2g2f2|e6 d4:|\n"
    cont = parse_continuation("tune.abc", tune)
    assert "L:1/8\n" in cont.header and "M:6/8\n" in cont.header and "K:D\n" in cont.header
    assert cont.body[1] == "[V:1]dfa afd|\n" and cont.bars == 5  # one bar a line, in eighths, as the corpus


def test_generate_cli_continues_a_file_and_names_a_bad_one(files, tmp_path, capsys):
    import json

    from notagen_trt.cli import main

    out = tmp_path / "out"
    assert main(["generate", "--backend", "ort-cpu", "--continue", str(files / "chorale.musicxml"), "--max-patches",
                 "30", "--formats", "abc", "--out", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["pieces"][0]
    abc = open(row["files"]["abc"]).read()
    assert "after-chorale" in row["files"]["abc"] and f"{MARKER}, after bar 15 of chorale.musicxml" in abc
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"\x00" * 64)
    assert main(["generate", "--backend", "ort-cpu", "--continue", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"notagen-trt generate: error: {bad}: not a standard MIDI file (no MThd header); export it again as .mid\n"
