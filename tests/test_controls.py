"""Generation controls beyond the published rules: a forced meter and key (PieceState's header
rule, one test per case) and a given text longer than the context (halved until it fits)."""

import numpy as np
import pytest
from conftest import BACH

from notagen_trt.config import BOS_ID, EOS_ID, PAD_ID
from notagen_trt.export.reference import ReferenceBackend
from notagen_trt.runtime import codec
from notagen_trt.runtime.piece import Decision, GenerationConfig, PieceState
from notagen_trt.runtime.prompts import resolve_prompt


def _patch(text: str) -> np.ndarray:
    """A sampled patch as an executor returns it: bos, the characters, eos, padding."""
    ids = [BOS_ID, *map(ord, text), EOS_ID][:16]
    return np.array(ids + [PAD_ID] * (16 - len(ids)), dtype=np.int64)


def _forced(prefix: list[int]) -> np.ndarray:
    """The patch an executor samples under a forced prefix that ends in eos (the rest is noise)."""
    return np.array(prefix + [ord("x")] * (16 - len(prefix)), dtype=np.int64)


def _state(**config) -> PieceState:
    state = PieceState(resolve_prompt(*BACH), GenerationConfig(**config), patch_length=64)
    state.context()
    return state


def _forced_line(state: PieceState) -> str:
    request = state.request()
    assert request.prefix[-1] == EOS_ID and not request.uniforms[: len(request.prefix)].any()
    return codec.decode_patch(request.prefix)


@pytest.mark.parametrize("given, meter", [("3/4", "3/4"), (" 6/8 ", "6/8"), ("C", "C"), ("C|", "C|"), ("12/8", "12/8")])
def test_meter_is_normalised(given, meter):
    assert GenerationConfig(meter=given).meter == meter


@pytest.mark.parametrize("given, key", [("D", "D"), ("Dm", "Dmin"), ("Bb", "Bb"), ("F#m", "F#min"), ("Ddor", "Ddor"),
                                        ("d minor", "Dmin"), ("G mixolydian", "Gmix"), ("Ebmaj", "Eb"), ("Amin", "Amin")])
def test_key_is_normalised_as_the_corpus_spells_it(given, key):
    assert GenerationConfig(key=given).key == key


@pytest.mark.parametrize("bad", [{"meter": "3/5"}, {"meter": "three"}, {"meter": "0/4"}, {"key": "H"}, {"key": "Dxyz"},
                                 {"key": "D#b"}, {"key": ""}])
def test_bad_meter_or_key_is_one_line_naming_the_value(bad):
    with pytest.raises(ValueError) as err:
        GenerationConfig(**bad)
    message = str(err.value)
    assert "\n" not in message and repr(next(iter(bad.values()))) in message


def test_rule_a_sampled_meter_line_with_another_value_is_forced():
    state = _state(meter="3/4")
    assert state.take(_patch("M:4/4\n")) is Decision.RESAMPLE
    assert _forced_line(state) == "M:3/4\n"
    assert state.take(_forced(state.request().prefix)) is Decision.ACCEPT
    assert state.piece.text.endswith("%Choral\nM:3/4\n") and state.piece.patches == 1


def test_rule_the_wanted_line_sampled_stands():
    state = _state(meter="3/4", key="D")
    for line in ("L:1/8\n", "M:3/4\n", "K:D\n", "V:1 treble\n"):
        assert state.take(_patch(line)) is Decision.ACCEPT
    assert state.take(_patch("[r:0/9][V:1]ab|")) is Decision.RESAMPLE  # the published body rule still runs
    assert codec.decode_patch(state.request().prefix) == "[r:0/"


def test_rule_a_header_moving_on_without_the_meter_gets_it():
    state = _state(meter="6/8", key="Dm")
    assert state.take(_patch("K:G\n")) is Decision.RESAMPLE  # K: before any M:
    assert _forced_line(state) == "M:6/8\n"
    assert state.take(_forced(state.request().prefix)) is Decision.ACCEPT
    assert state.take(_patch("K:G\n")) is Decision.RESAMPLE  # now the key is wrong
    assert _forced_line(state) == "K:Dmin\n"
    assert state.take(_forced(state.request().prefix)) is Decision.ACCEPT
    assert state.piece.text.endswith("M:6/8\nK:Dmin\n")


@pytest.mark.parametrize("next_line", ["V:1 treble\n", "[r:0/9][V:1]a|", "[V:1]ab|"])
def test_rule_a_header_ending_without_the_key_gets_it(next_line):
    state = _state(key="Bb")
    assert state.take(_patch("M:2/4\n")) is Decision.ACCEPT  # no meter asked: any stands
    assert state.take(_patch(next_line)) is Decision.RESAMPLE
    assert _forced_line(state) == "K:Bb\n"


def test_rule_both_missing_force_meter_then_key_then_the_body_prefix():
    state = _state(meter="3/4", key="F#m", bars=8)
    for want in ("M:3/4\n", "K:F#min\n"):
        assert state.take(_patch("[r:0/3][V:1]a|")) is Decision.RESAMPLE
        assert _forced_line(state) == want
        assert state.take(_forced(state.request().prefix)) is Decision.ACCEPT
    assert state.take(_patch("[r:0/3][V:1]a|")) is Decision.RESAMPLE
    assert codec.decode_patch(state.request().prefix) == "[r:0/8]"


def test_rule_a_patch_inside_a_header_line_is_not_a_field():
    """A header line longer than a patch continues in the next; its text is not a line start."""
    state = _state(meter="3/4")
    assert state.take(_patch("M:3/4\n")) is Decision.ACCEPT
    assert state.take(np.array([BOS_ID, *map(ord, "V:1 treble nm=\"A")], dtype=np.int64)) is Decision.ACCEPT
    assert state.take(_patch("M:\"\n")) is Decision.ACCEPT


def test_rule_the_body_is_left_alone():
    state = _state(meter="3/4", key="D")
    for line in ("M:3/4\n", "K:D\n", "V:1\n"):
        state.take(_patch(line))
    state.take(_patch("[r:0/3][V:1]a|"))
    state.take(_forced(state.request().prefix + [ord(c) for c in "3][V:1]a|"]))
    assert state.take(_patch("[r:1/2][M:2/4]")) is Decision.ACCEPT  # an inline change in the body stands


def test_no_controls_no_forcing():
    state = _state()
    for line in ("M:5/4\n", "V:1\n", "K:C\n"):
        assert state.take(_patch(line)) is Decision.ACCEPT


def test_a_given_text_longer_than_the_context_is_halved_until_it_fits():
    header = "%Baroque\n%Bach, Johann Sebastian\n%Choral\nL:1/8\nM:4/4\nK:G\nV:1\n"
    body = [f"[r:{i}/{39 - i}][V:1]abcd efga|\n" for i in range(40)]  # 2 patches a line
    text = header + "".join(body)
    state = PieceState(None, GenerationConfig(), patch_length=30, text=text)
    patches = state.context()
    assert not state.done and len(patches) < 30 and state.piece.rebuilds == 2  # 40 -> 20 -> 10 lines
    loaded = codec.decode(patches) + codec.decode_patch(state.request().prefix)
    assert loaded == header + "".join(body[-10:])  # the header and the last bars, the last one open
    assert state.piece.text == text  # the piece keeps every given bar


def test_a_given_header_that_alone_fills_the_context_stops():
    state = PieceState(None, GenerationConfig(), patch_length=4, text="L:1/8\nM:4/4\nK:G\nV:1\n[V:1]a|\n[V:1]b|\n")
    state.context()
    assert state.piece.stop_reason == "context_full"


def test_generated_pieces_carry_the_asked_meter_and_key(trained):
    backend = ReferenceBackend(trained, "cached")
    for seed, (meter, key) in enumerate([("3/4", "D"), ("6/8", "Am"), ("2/2", "Bb")]):
        piece = backend.generate(resolve_prompt(*BACH), GenerationConfig(seed=seed, meter=meter, key=key, max_patches=30))
        header = codec.split_lines(piece.text)[0]
        assert f"M:{meter}\n" in header and f"K:{GenerationConfig(key=key).key}\n" in header
        assert not [line for line in header if line[:2] in ("M:", "K:") and line not in
                    (f"M:{meter}\n", f"K:{GenerationConfig(key=key).key}\n")]


# ---- a forced meter: bars of another length are sampled again -------------------------------------
def _in_body(meter="3/4", **config) -> PieceState:
    """A piece whose header (L:1/8, the meter) is written and whose body has begun: line 0 closed."""
    state = PieceState(None, GenerationConfig(meter=meter, **config), patch_length=64,
                       text=f"L:1/8\nM:{meter}\nK:D\nV:1\n[r:0/9][V:1]d|\n")
    state.context()
    prefix = state.request().prefix
    assert codec.decode_patch(prefix) == "[r:0/9][V:1]d|\n"  # the open last bar: its patch closes it
    assert state.take(np.array(prefix + [EOS_ID], dtype=np.int64)) is Decision.ACCEPT
    return state


def _full(text: str) -> np.ndarray:
    """A patch of 16 characters and no eos (a bar that may go on in the next patch)."""
    assert len(text) == 16
    return np.array([ord(c) for c in text], dtype=np.int64)


def test_rule_a_bar_of_another_length_in_one_patch_is_sampled_again():
    state = _in_body()
    assert state.take(_patch("[r:1/8][V:1]ab")) is Decision.RESAMPLE  # 2 eighths, the meter asks 6
    assert state.request().prefix == []  # no forced characters: drawn again from the same context
    assert state.take(_patch("[r:1/8][V:1]a6")) is Decision.ACCEPT
    assert state.piece.text.endswith("d|\n[r:1/8][V:1]a6")


def test_rule_a_bar_begun_in_earlier_patches_is_taken_back():
    state = _in_body()
    assert state.take(_full("[r:1/8][V:1]abcd")) is Decision.ACCEPT
    assert state.take(_patch("efg|\n")) is Decision.RELOAD  # 7 eighths: the whole bar goes
    assert state.piece.text.endswith("[V:1]d|\n") and not state.done
    patches = state.context()
    assert codec.decode(patches).endswith("[V:1]d|\n") and state.request().prefix == []  # the bar before stays whole
    assert state.take(_full("[r:1/8][V:1]abcd")) is Decision.ACCEPT
    assert state.take(_patch("ef|\n")) is Decision.ACCEPT


def test_rule_a_bar_that_fills_its_patches_exactly_is_judged_when_the_next_begins():
    state = _in_body("2/4")
    assert state.take(_full("[r:1/8][V:1]abcd")) is Decision.ACCEPT  # 4 eighths, no eos: it may go on
    assert state.take(_full("[r:2/7][V:1]abcd")) is Decision.ACCEPT  # it did not: judged (right) now
    state = _in_body("2/4")
    assert state.take(_full("[r:1/8][V:1]abc3")) is Decision.ACCEPT  # 5 eighths
    assert state.take(_patch("|[V:2]ab")) is Decision.RELOAD  # the next bar begins: the last is taken back
    assert state.piece.text.endswith("d|\n")


@pytest.mark.parametrize("line", ["[r:9/0][V:1]ab|", "|1 ab", "[r:1/8][V:1][M:2/4]ab|"])
def test_rule_last_lines_endings_and_meter_changes_are_not_judged(line):
    state = _in_body()
    assert state.take(_patch(line)) is Decision.ACCEPT


def test_rule_the_first_line_is_not_judged():
    state = _state(meter="3/4", key="D")
    for line in ("L:1/8\n", "M:3/4\n", "K:D\n", "V:1\n"):
        state.take(_patch(line))
    state.take(_patch("[r:0/9][V:1]d|"))
    assert state.take(_forced(state.request().prefix + [ord(c) for c in "9][V:1]d|"])) is Decision.ACCEPT  # a pickup


def test_rule_a_bar_stands_after_the_retries():
    from notagen_trt.runtime.piece import MAX_BAR_RETRIES

    state = _in_body()
    for _ in range(MAX_BAR_RETRIES):
        assert state.take(_patch("[r:1/8][V:1]ab")) is Decision.RESAMPLE
    assert state.take(_patch("[r:1/8][V:1]ab")) is Decision.ACCEPT
    assert state.take(_patch("|[V:2]a")) is Decision.RESAMPLE  # the next bar is judged afresh


# ---- a forced key: a lower voice's first bar that names another key is sampled again -------------
@pytest.mark.parametrize("key, sharps", [("C", 0), ("Am", 0), ("D", 2), ("Bb", -2), ("Gm", -2), ("F#m", 3), ("Ddor", 0),
                                         ("Emix", 3), ("C#", 7), ("Cb", -7), ("treble", None), ("bass", None),
                                         ("none", None), ("Gbass", -6), ("Amaj", 3), ("Aaeolian", 0)])
def test_key_signature(key, sharps):
    """As ABC readers take a K: value: a clef glued on after the key ('Gbass') leaves G flat major."""
    from notagen_trt.runtime.piece import key_signature

    assert key_signature(key) == sharps


def _first_line(key: str) -> PieceState:
    """A two-voice piece whose first body line holds the upper voice's first bar."""
    state = PieceState(None, GenerationConfig(key=key), patch_length=64,
                       text=f"L:1/8\nM:3/4\nK:{GenerationConfig(key=key).key}\nV:1\nV:2\n[r:0/9][V:1]d6")
    state.context()
    prefix = state.request().prefix
    assert state.take(np.array(prefix + [EOS_ID], dtype=np.int64)) is Decision.ACCEPT
    return state


def test_rule_a_first_bar_in_another_key_is_sampled_again():
    state = _first_line("D")
    assert state.take(_patch("|[V:2][K:C] A6")) is Decision.RESAMPLE  # no sharps under K:D
    assert state.take(_patch("|[V:2][K:D] A6")) is Decision.ACCEPT  # the corpus restates the key there
    assert state.piece.text.endswith("[V:1]d6|[V:2][K:D] A6")


def test_rule_a_clef_glued_to_a_key_is_judged_as_readers_take_it():
    state = _first_line("Gm")
    assert state.take(_full("|[V:2][K:Gbass]A")) is Decision.ACCEPT  # the bar goes on: judged when it closes
    assert state.take(_patch("6")) is Decision.RELOAD  # G flat major in bass clef: taken back
    assert state.piece.text.endswith("[V:1]d6")
    state = _first_line("Gm")
    assert state.take(_full("|[V:2][K:Bb bass")) is Decision.ACCEPT
    assert state.take(_patch("]A6")) is Decision.ACCEPT  # Gmin's signature, then the clef


def test_rule_a_first_bar_keeps_a_relative_key_and_later_changes():
    state = _first_line("Am")
    assert state.take(_patch("|[V:2][K:C] A6")) is Decision.ACCEPT  # Amin's signature: as the corpus writes it
    assert state.take(_patch("|\n")) is Decision.ACCEPT
    assert state.take(_patch("[r:1/8][V:1][K:D]d6")) is Decision.ACCEPT  # a key change later on stands


def test_rule_a_bar_in_another_key_stands_after_the_retries():
    from notagen_trt.runtime.piece import MAX_BAR_RETRIES

    state = _first_line("D")
    for _ in range(MAX_BAR_RETRIES):
        assert state.take(_patch("|[V:2][K:F] A6")) is Decision.RESAMPLE
    assert state.take(_patch("|[V:2][K:F] A6")) is Decision.ACCEPT


def test_bar_splitter_forgets_a_bar_taken_back():
    from notagen_trt.runtime.piece import BarSplitter

    splitter = BarSplitter()
    assert splitter.feed("[V:1]ab|\n[V:1]abc") == ["[V:1]ab|\n"]
    splitter.take_back(len("[V:1]abc"))
    assert splitter.feed("[V:1]abcdef|\n") == ["[V:1]abcdef|\n"]


# ---- the demo model, end to end --------------------------------------------------------------------
COMBOS = [("3/4", "D"), ("6/8", "Am"), ("4/4", "Bb"), ("2/4", "G"), ("3/4", "Dm")]


@pytest.mark.slow
def test_demo_pieces_carry_the_asked_meter_and_key_and_keep_to_the_meter():
    """20 seeds on the demo model (ONNX Runtime CPU): every header has the asked M: and K:, and
    at least 90% of the pieces parse with music21 with every bar one bar of the meter."""
    from notagen_trt.runtime import PieceRequest, load_engine
    from notagen_trt.runtime.abcio import check
    from notagen_trt.runtime.evaluate import bars_match_meter
    from notagen_trt.runtime.postprocess import postprocess

    configs = [GenerationConfig(seed=s, meter=COMBOS[s % 5][0], key=COMBOS[s % 5][1], max_patches=400) for s in range(20)]
    with load_engine(backend="ort-cpu", rows=4) as engine:
        pieces = engine.generate(PieceRequest(None, c) for c in configs)
    good, why = 0, []
    for config, piece in zip(configs, pieces):
        abc = postprocess(piece.text)
        fields = [line for line in abc.splitlines() if line[:2] in ("M:", "K:")]
        assert fields == [f"M:{config.meter}", f"K:{config.key}"], (config.seed, fields)
        parsed, (bars_ok, bars_why) = check(abc), bars_match_meter(abc)
        good += parsed.music21 and bars_ok
        why += [] if parsed.music21 and bars_ok else [f"seed {config.seed}: {parsed.error or bars_why}"]
    assert good >= 18, why


def test_generate_cli_meter_key_and_their_errors(tmp_path, capsys):
    import json

    from notagen_trt.cli import main

    out = tmp_path / "out"
    assert main(["generate", "--backend", "ort-cpu", "--meter", "6/8", "--key", "F#m", "--seed", "3", "--num-pieces", "2",
                 "--max-patches", "60", "--formats", "abc", "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["pieces"]
    for row in rows:
        abc = open(row["files"]["abc"]).read()
        assert "\nM:6/8\n" in abc and "\nK:F#min\n" in abc and "; meter 6/8; key F#min;" in abc.splitlines()[0]
        assert "_M6-8_KFsharpmin" in row["files"]["abc"]
    for flags, message in ((["--meter", "3/5"], "--meter must look like"), (["--key", "H#"], "--key must be"),
                           (["--key", "D", "--continue", "x.abc"], "a continued piece keeps its file's")):
        assert main(["generate", "--backend", "ort-cpu", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
