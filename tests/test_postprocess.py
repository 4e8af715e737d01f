from fractions import Fraction

from notagen_trt.runtime.postprocess import fix_score_brackets, postprocess

GENERATED = """%Classical
%Mozart, Wolfgang Amadeus
%Keyboard
%%score { ( 1 3 ) | 2
L:1/8
M:3/4
K:C
V:1 treble
V:2 bass
V:3 treble
[r:0/2][V:1]c2 e2 g2|[V:2]C,6|[V:3]E6|
[r:1/1][V:1]d4 z2|
[r:2/0][V:3]G6|][V:2]G,,6|]
%end
"""


def test_postprocess_restores_a_standard_tune():
    out = postprocess(GENERATED)
    lines = out.splitlines()
    assert lines[0] == "X:1"
    assert "%Classical" not in out and "%end" not in out  # prompt / comment lines dropped
    assert "[r:" not in out
    assert lines[1] == "%%score { ( 1 3 ) | 2 }"  # brace completed
    body = [line for line in lines if line.startswith("[V:")]
    assert body[0] == "[V:1]c2 e2 g2|[V:2]C,6|[V:3]E6|"
    # voice 2 leads its staff group -> visible rest; voice 3 shares voice 1's staff -> invisible
    assert body[1] == "[V:1]d4 z2|[V:2]z6|[V:3]x6|"
    # voices sorted by number, rests take the line's barline
    assert body[2] == "[V:1]z6|][V:2]G,,6|][V:3]G6|]"


def test_postprocessed_tune_converts_with_abc2xml_and_music21():
    import music21
    from abctoolkit.abc2xml import fixDoctype, getXmlDocs
    from abctoolkit.rotate import unrotate_abc

    out = postprocess(GENERATED)
    assert out.count("%%score") == 1
    score = music21.converter.parse(fixDoctype(getXmlDocs(out)[0]), format="musicxml")
    assert len(score.parts) == 2  # voices 1 and 3 share a staff
    assert score.highestTime == 9.0  # three bars of 3/4, in quarter notes
    # music21's own ABC reader needs one block per voice, so un-interleave first
    assert music21.converter.parse("".join(unrotate_abc(out.splitlines(keepends=True))), format="abc").highestTime == 9.0


def test_fix_score_brackets():
    assert fix_score_brackets("%%score { 1 | 2\n") == "%%score { 1 | 2 }\n"
    assert fix_score_brackets("%%score ( 1 2 ) ) | 3 ]\n") == "%%score ( 1 2 )  | 3 \n"
    assert fix_score_brackets("%%score [ ( 1 2 ) { 3 | 4 } ]\n") == "%%score [ ( 1 2 ) { 3 | 4 } ]\n"


def test_duration_of_restored_rest_is_the_commonest_bar_length():
    from notagen_trt.runtime.postprocess import _bar_duration

    assert _bar_duration("c2 e2 g2|") == Fraction(6)
    out = postprocess("L:1/8\nM:2/4\nK:C\nV:1\nV:2\n[V:2]c/d/e/f/ g2|\n")
    assert "[V:1]z4|[V:2]c/d/e/f/ g2|" in out


def test_part_names_lose_the_musicxml_layout_whitespace():
    """Models trained on the old corpus write xml2abc's nm="\\n\\t\\t\\t:Viola"; scores show "Viola"."""
    out = postprocess('L:1/8\nM:2/4\nK:C\nV:1 treble nm="\\n\t\t\t:Violin I" snm="\\n\t\t\t"\n'
                      'V:2 alto nm="Viola " snm="Vla."\n[V:1]c4|[V:2]C4|\n')
    assert 'V:1 treble nm="Violin I"\n' in out and 'V:2 alto nm="Viola" snm="Vla."\n' in out
