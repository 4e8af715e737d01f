"""The patch codec follows the published rules: hand-checked cases and round trips."""

import numpy as np
import pytest
from conftest import TUNES

from notagen_trt.runtime import codec

E = chr(2)


@pytest.mark.parametrize(
    "line, bars",
    [
        # barline opens the next segment; the trailing barline + newline stays on the last bar
        ("[r:0/3][V:1]abc|[V:2]def|\n", ["[r:0/3][V:1]abc", "|[V:2]def|\n"]),
        ("[V:1]|:A|dfa afd|\n", ["[V:1]", "|:A", "|dfa afd|\n"]),
        ("[V:1]c2 B2 A4|:[V:2]C2|:\n", ["[V:1]c2 B2 A4", "|:[V:2]C2|:\n"]),
        ("[V:1]e3 d2:|\n", ["[V:1]e3 d2:|\n"]),
        ("[V:1]G8|][V:2]G,8|]\n", ["[V:1]G8", "|][V:2]G,8|]\n"]),
        ("[V:1]a||b::c[|d|\n", ["[V:1]a", "||b", "::c", "[|d|\n"]),
        ("[V:1]ab|[V:2]c", ["[V:1]ab", "|[V:2]c"]),  # an open bar keeps its own segment
        ("nobarline\n", ["nobarline\n"]),
    ],
)
def test_split_bars(line, bars):
    assert codec.split_bars(line) == bars


def test_segment_patches_eos_only_when_not_a_multiple_of_16():
    assert codec.segment_patches("abc") == ["abc" + E]
    assert codec.segment_patches("a" * 16) == ["a" * 16]
    assert codec.segment_patches("a" * 17) == ["a" * 16, "a" + E]
    assert codec.segment_patches("abc", open_end=True) == ["abc"]


def test_special_patches():
    assert codec.BOS_PATCH == chr(1) * 15 + E
    assert codec.EOS_PATCH == chr(1) + E * 15
    assert codec.is_eos_patch([ord(c) for c in codec.EOS_PATCH])
    assert not codec.is_eos_patch([ord(c) for c in codec.BOS_PATCH])


def test_stream_prefixes_count_lines_and_lines_remaining():
    assert codec.add_stream_prefixes(["a\n", "b\n", "c\n"]) == ["[r:0/2]a\n", "[r:1/1]b\n", "[r:2/0]c\n"]
    assert codec.strip_stream_prefix("[r:12/3][V:1]ab|\n") == "[V:1]ab|\n"


def ids(text: str) -> list[int]:
    return [ord(c) for c in text] + [0] * (16 - len(text))


def test_encode_train_hand_checked():
    got = codec.encode_train("L:1/8\n\n[V:1]ab|\n")
    # header line + eos, padded; "[r:0/0][V:1]ab|\n" is exactly 16 chars, so it gets no eos.
    want = [ids(codec.BOS_PATCH), ids("L:1/8\n" + E), ids("[r:0/0][V:1]ab|\n"), ids(codec.EOS_PATCH)]
    assert got.tolist() == want
    assert got.dtype == np.int64


def test_encode_generate_leaves_the_last_bar_open():
    patches, prefix = codec.encode_generate("L:1/8\n[r:0/1][V:1]ab|[V:2]c")
    assert patches.tolist() == [ids(codec.BOS_PATCH), ids("L:1/8\n" + E), ids("[r:0/1][V:1]ab" + E)]
    assert prefix == [ord(c) for c in "|[V:2]c"]
    # a prompt only: header patches, nothing open
    patches, prefix = codec.encode_generate("%Baroque\n%Bach, Johann Sebastian\n%Choral\n")
    assert patches.tolist()[1:] == [ids("%Baroque\n" + E), ids("%Bach, Johann Se"), ids("bastian\n" + E), ids("%Choral\n" + E)]
    assert prefix == []


def test_decode_stops_at_eos_and_skips_pad_and_bos():
    assert codec.decode_patch(ids("ab" + E + "zz")) == "ab"
    assert codec.decode([ids(codec.BOS_PATCH), ids("xy"), ids(codec.EOS_PATCH)]) == "xy"
    assert codec.clean_patch(ids("ab" + E + "zz")).tolist() == ids("ab" + E)


@pytest.mark.parametrize("tune", TUNES)
def test_round_trip(tune):
    header, body = codec.split_lines(tune)
    assert codec.decode(codec.encode_train(tune, stream=False)) == "".join(header + body)
    streamed = "".join(header + codec.add_stream_prefixes(body))
    assert codec.decode(codec.encode_train(tune)) == streamed
    assert codec.decode(codec.encode_train(streamed)) == streamed  # prefixes are not added twice
    patches, prefix = codec.encode_generate(streamed)
    assert codec.decode(patches) + "".join(map(chr, prefix)) == streamed


@pytest.mark.parametrize("tune", TUNES)
@pytest.mark.parametrize("patch_length", [16, 24, 64])
def test_windows_predict_every_patch_once(tune, patch_length):
    full = codec.encode_train(tune)
    windows = codec.encode_windows(tune, patch_length)
    header_len = len(codec._patches_for(codec.split_lines(tune)[0], [], False))
    assert all(len(w) <= patch_length for w in windows)
    targets = [w[1:] for w in windows[:1]] + [w[header_len:] for w in windows[1:]]
    assert np.array_equal(np.concatenate(targets), full[1:])


def test_non_ascii_is_rejected():
    with pytest.raises(ValueError, match="not ASCII"):
        codec.encode_train("L:1/8\n[V:1]é|\n")


def test_every_corpus_piece_round_trips():
    from notagen_trt.corpus import default_split, read_pieces

    count = 0
    for split in ("train", "calib", "heldout"):
        for name, text in read_pieces(default_split(split)):
            header, body = codec.split_lines(text)
            assert codec.decode(codec.encode_train(text)) == "".join(header + body), name
            count += 1
    assert count > 4000
