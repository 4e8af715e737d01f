"""Generated interleaved ABC -> a standard tune: what the model writes is NotaGen's training
format (``[r:i/j]`` prefixes, rest-reduced voices, prompt comments); users want plain ABC."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

_VOICE_DEF = re.compile(r"^V:\s*(\S+)")
_VOICE_TAG = re.compile(r"\[V:([^\]]+)\]")
_STREAM = re.compile(r"^(\[r:[^\]]*\])+")  # a line's stream prefix (repeated ones too)
_BARLINE = r"(\|\]|\|\||:\||::|\|:|\[\||\|)"
_BAR_END = re.compile(_BARLINE + r"\s*$")
_BAR_START = re.compile(r"^\s*" + _BARLINE)
_NAME_ATTR = re.compile(r'\s*\b(s?nm)="([^"]*)"')


def clean_part_name(name: str) -> str:
    """A part name without the MusicXML layout whitespace xml2abc carries into it: a part-group
    name of only whitespace, joined by ':' and with newlines escaped, makes ``\\n\t\t\t:Viola``."""
    text = re.sub(r"(?:\\n|\s)+", " ", name)
    return re.sub(r"\s*:\s*", ":", text).strip(" :")


def clean_voice_names(line: str) -> str:
    """A ``V:`` line with clean ``nm`` / ``snm`` names; a name left empty is dropped."""
    if not line.startswith("V:"):
        return line

    def clean(match: re.Match) -> str:
        name = clean_part_name(match.group(2))
        return f' {match.group(1)}="{name}"' if name else ""

    return _NAME_ATTR.sub(clean, line)


def _bar_duration(text: str) -> Fraction | None:
    """Length of one voice's bar in units of L, by the authors' bar arithmetic (abctoolkit)."""
    import contextlib
    import io

    from abctoolkit.duration import calculate_bartext_duration

    notes = _BAR_START.sub("", _BAR_END.sub("", text))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its parse failures
            return calculate_bartext_duration(notes)
    except Exception:  # malformed generated bars: no duration rather than a crash
        return None


def _format_duration(d: Fraction) -> str:
    if d == 1:
        return ""
    return str(d.numerator) if d.denominator == 1 else f"{d.numerator}/{d.denominator}"


def fix_score_brackets(line: str) -> str:
    """Balance the ( [ { groups on a ``%%score`` line that generation left open or broken."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack, out = [], []
    for ch in line.rstrip("\n"):
        if ch in pairs:
            stack.append(ch)
        elif ch in pairs.values():
            if not stack or pairs[stack[-1]] != ch:
                continue  # drop a closer with no opener
            stack.pop()
        out.append(ch)
    return "".join(out) + "".join(" " + pairs[c] for c in reversed(stack)) + "\n"


def _score_group_leaders(score_line: str | None, voices: list[str]) -> set[str]:
    """Voices that open a %%score group: a missing bar there becomes a visible rest ``z``,
    elsewhere an invisible one ``x`` (staff-sharing voices would show a second rest)."""
    if not score_line:
        return set(voices)
    leaders, depth_paren = set(), 0
    prev_was_member = False
    for token in re.findall(r"[()\[\]{}|]|[^\s()\[\]{}|]+", score_line[len("%%score") :]):
        if token == "(":
            depth_paren += 1
            prev_was_member = False
        elif token == ")":
            depth_paren -= 1
        elif token in "[]{}|":
            prev_was_member = False
        else:
            if not (depth_paren > 0 and prev_was_member):
                leaders.add(token)
            prev_was_member = depth_paren > 0
    return leaders or set(voices)


def _voice_sort_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (1 << 30, v)


def restore_line(line: str, voices: list[str], leaders: set[str]) -> str:
    """Put back the voices dropped from one interleaved bar line, sorted by voice number."""
    pieces = _VOICE_TAG.split(line.rstrip("\n"))
    bars = {pieces[i].strip(): pieces[i + 1] for i in range(1, len(pieces) - 1, 2)}
    missing = [v for v in voices if v not in bars]
    if missing and bars:
        durations = Counter(d for t in bars.values() if (d := _bar_duration(t)) is not None and d > 0)
        barlines = Counter(m.group(1) for t in bars.values() if (m := _BAR_END.search(t)))
        if durations:
            dur = _format_duration(durations.most_common(1)[0][0])
            barline = barlines.most_common(1)[0][0] if barlines else "|"
            for v in missing:
                bars[v] = f"{'z' if v in leaders else 'x'}{dur}{barline}"
    ordered = sorted(bars, key=_voice_sort_key)
    return pieces[0] + "".join(f"[V:{v}]{bars[v]}" for v in ordered) + "\n"


def postprocess(abc: str) -> str:
    """Strip ``[r:]`` prefixes, restore rest-reduced voices, balance %%score brackets, drop
    ``%`` comment lines (keeping ``%%`` directives), clean part names (models trained on a corpus
    that kept MusicXML whitespace in them write ``nm="\\n\t\t\t:Viola"``) and prepend ``X:1``."""
    lines = [line if line.endswith("\n") else line + "\n" for line in abc.splitlines() if line.strip()]
    lines = [line for line in lines if not (line.startswith("%") and not line.startswith("%%"))]
    lines = [line for line in lines if not line.startswith("X:")]
    lines = [clean_voice_names(_STREAM.sub("", line, count=1)) for line in lines]
    score = next((i for i, line in enumerate(lines) if line.startswith("%%score")), None)
    if score is not None:
        lines[score] = fix_score_brackets(lines[score])
    voices = []
    for line in lines:
        if (m := _VOICE_DEF.match(line)) and m.group(1) not in voices:
            voices.append(m.group(1))
    leaders = _score_group_leaders(lines[score] if score is not None else None, voices)
    out = ["X:1\n"]
    for line in lines:
        out.append(restore_line(line, voices, leaders) if line.startswith("[V:") else line)
    return "".join(out)
