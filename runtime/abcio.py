"""ABC -> MusicXML / music21, and the validity checks used to judge generated pieces.

The abc2xml converter (bundled in the model authors' ``abctoolkit``) reads interleaved ABC as
generated; music21's own ABC reader needs one block per voice, so pieces are un-interleaved with
abctoolkit's ``unrotate_abc`` first. Both are optional imports (the ``music`` extra)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass


def to_musicxml(abc: str) -> str:
    """MusicXML text for a post-processed tune, by abc2xml; ValueError if it cannot convert."""
    from abctoolkit.abc2xml import fixDoctype, getXmlDocs

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            docs = getXmlDocs(abc)
    except Exception as exc:  # the converter raises many kinds on malformed ABC
        raise ValueError(f"abc2xml could not convert the tune: {exc}") from None
    if not docs:
        raise ValueError("abc2xml produced no score")
    return fixDoctype(docs[0])


def uninterleave(abc: str) -> str:
    from abctoolkit.rotate import unrotate_abc

    # unrotate_abc takes every line after the header for a bar line; a comment (a continuation's
    # marker) carries no music, so it is left out.
    lines = [line for line in abc.splitlines(keepends=True) if not (line.startswith("%") and not line.startswith("%%"))]
    with contextlib.redirect_stdout(io.StringIO()):
        return "".join(unrotate_abc(lines))


def parse_music21(abc: str):
    """A music21 Score from a post-processed (interleaved) tune."""
    import music21

    with contextlib.redirect_stdout(io.StringIO()):
        return music21.converter.parse(uninterleave(abc), format="abc")


@dataclass
class Validity:
    music21: bool
    abc2xml: bool
    error: str = ""

    @property
    def valid(self) -> bool:
        return self.music21 and self.abc2xml


def check(abc: str) -> Validity:
    """Does a post-processed tune parse with music21 and convert with abc2xml?"""
    errors, ok = [], {}
    for name, fn in (("music21", parse_music21), ("abc2xml", to_musicxml)):
        try:
            result = fn(abc)
            ok[name] = result is not None and (name != "music21" or result.highestTime > 0)
        except Exception as exc:  # any failure counts as invalid; keep the first reason
            ok[name] = False
            errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return Validity(ok["music21"], ok["abc2xml"], "; ".join(errors))
