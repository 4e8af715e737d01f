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
