"""Write a generated piece as .abc, .musicxml, .mid and an .svg score (every page).

The .abc is written first and always kept; each conversion after it may fail on its own (the
failure is reported, never raised), every file is written atomically (temp name, rename), and a
write that fails (a full disk, a read-only folder) stops the run with one line naming the file.
An earlier, different piece is never replaced: a new tune whose name is taken gets ``_2``, ``_3``..."""

from __future__ import annotations

import re
from pathlib import Path

from notagen_trt.errors import NotaGenError
from notagen_trt.files import write_atomic

from . import abcio

FORMATS = ("abc", "musicxml", "midi", "svg")
EXTENSIONS = {"abc": "abc", "musicxml": "musicxml", "midi": "mid", "svg": "svg"}


def parse_formats(text: str, flag: str) -> tuple[str, ...]:
    """A comma list of FORMATS from the command line (in FORMATS' order); an unknown one names ``flag``."""
    asked = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in asked if f not in FORMATS]
    if unknown:
        raise NotaGenError(f"unknown {flag} {', '.join(unknown)}; choose from {','.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in asked)


def _midi(musicxml: str) -> bytes:
    import warnings

    import music21

    # Its notices about the generated MusicXML (a tie it drops, an odd direction) went to stderr
    # between generate's lines; a conversion that fails is reported with the piece instead.
    warnings.filterwarnings("ignore", category=music21.musicxml.xmlObjects.MusicXMLWarning)
    score = music21.converter.parse(musicxml, format="musicxml")
    _open_each_repeat(score)
    try:
        return music21.midi.translate.streamToMidiFile(score).writestr()
    except music21.repeat.ExpanderException:
        # Generated repeats can be unbalanced; play the bars once each rather than lose the MIDI.
        for barline in list(score[music21.bar.Repeat]):
            barline.activeSite.remove(barline)
        return music21.midi.translate.streamToMidiFile(score).writestr()


def _open_each_repeat(score) -> None:
    """Give every end repeat its start: a ``:|`` with no ``|:`` since the last ``:|`` repeats the
    bars after that one (the engraver's reading). music21 takes each such ``:|`` back to the start
    of the piece, repeats included: a generated 25-bar chorale with ten of them became 2,457 bars
    and two minutes of MIDI conversion."""
    import music21

    for part in score.parts:
        measures = list(part.getElementsByClass("Measure"))
        after_end, opened = 0, False  # the bar after the last end repeat; a start since then
        for i, measure in enumerate(measures):
            if isinstance(measure.leftBarline, music21.bar.Repeat) and measure.leftBarline.direction == "start":
                opened = True
            if isinstance(measure.rightBarline, music21.bar.Repeat) and measure.rightBarline.direction == "end":
                if not opened and after_end > 0:
                    measures[after_end].leftBarline = music21.bar.Repeat(direction="start")
                after_end, opened = i + 1, False


def verovio_toolkit():
    """A verovio toolkit with its fonts: the default resource path set at import holds for the
    first toolkit only (verovio 6.x), later ones fail to load any score without it."""
    from importlib.resources import files

    import verovio

    verovio.enableLog(verovio.LOG_OFF)
    tk = verovio.toolkit(False)
    tk.setResourcePath(str(files("verovio") / "data"))
    return tk


def _svg(musicxml: str) -> str:
    tk = verovio_toolkit()
    tk.setOptions({"adjustPageHeight": True, "footer": "none", "header": "none"})
    if not tk.loadData(musicxml):
        raise ValueError("verovio could not read the MusicXML")
    return stack_pages([tk.renderToSVG(page) for page in range(1, tk.getPageCount() + 1)])


_ROOT = re.compile(r'<svg\b[^>]*?\bwidth="([\d.]+)px"[^>]*?\bheight="([\d.]+)px"')


def stack_pages(pages: list[str]) -> str:
    """One SVG holding verovio's pages one under the other (verovio renders a page per call; a
    preview of page 1 alone hid the rest of a long piece)."""
    if len(pages) == 1:
        return pages[0]
    sizes = []
    for page in pages:
        match = _ROOT.search(page)
        if match is None:
            raise ValueError("verovio wrote an SVG page without a width and height")
        sizes.append((float(match.group(1)), float(match.group(2))))
    body, top = [], 0.0
    for page, (_, height) in zip(pages, sizes):
        page = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", page)
        body.append(page.replace("<svg ", f'<svg x="0" y="{top:g}" ', 1))
        top += height
    width = max(w for w, _ in sizes)
    return (f'<svg width="{width:g}px" height="{top:g}px" version="1.1" xmlns="http://www.w3.org/2000/svg" '
            f'xmlns:xlink="http://www.w3.org/1999/xlink">\n' + "\n".join(body) + "\n</svg>\n")


def free_stem(out_dir: Path, stem: str, abc: str) -> str:
    """``stem`` when none of its files exist or its .abc holds this very tune (a rerun rewrites
    the same piece); otherwise the first free ``stem_2``, ``stem_3``..."""
    candidate, n = stem, 1
    while True:
        abc_path = out_dir / f"{candidate}.abc"
        try:
            if abc_path.read_text(encoding="utf-8") == abc:
                return candidate
        except FileNotFoundError:
            if not any((out_dir / f"{candidate}.{ext}").exists() for ext in EXTENSIONS.values()):
                return candidate
        except (OSError, UnicodeDecodeError):
            pass  # unreadable: not ours to replace
        n += 1
        candidate = f"{stem}_{n}"


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def convert(abc: str, formats: tuple[str, ...] | list[str] = FORMATS) -> tuple[dict[str, str | bytes], dict[str, str]]:
    """({kind: MusicXML text, MIDI bytes or SVG text}, {kind: why it failed}) for the ``formats``
    beyond ``abc`` (the CLI writes them, the service returns them); failures are reported, never raised."""
    wanted = [k for k in FORMATS[1:] if k in formats]
    if not wanted:
        return {}, {}
    try:
        musicxml = abcio.to_musicxml(abc)
    except ImportError as exc:
        return {}, {k: f"no MusicXML: {exc}; pip install 'notagen-trt[music]', or ask for abc only" for k in wanted}
    except Exception as exc:  # a malformed generated tune: keep the .abc, report the rest
        return {}, {k: f"no MusicXML: {exc}" for k in wanted}
    converters = {"musicxml": lambda xml: xml, "midi": _midi, "svg": _svg}
    made, errors = {}, {}
    for kind in wanted:
        try:
            made[kind] = converters[kind](musicxml)
        except Exception as exc:  # converters raise many types on odd scores; report, keep going
            errors[kind] = _reason(exc)
    return made, errors


def write_piece(out_dir: str | Path, stem: str, abc: str,
                formats: tuple[str, ...] = FORMATS) -> tuple[dict[str, str], dict[str, str]]:
    """({kind: path} written, {kind: error} failed) for one post-processed tune; ``formats``
    beyond ``abc`` are converted from it. A failed write raises NotaGenError (one line)."""
    out_dir = Path(out_dir)
    stem = free_stem(out_dir, stem, abc)
    path = out_dir / f"{stem}.abc"
    write_atomic(path, abc)
    files = {"abc": str(path)}
    made, errors = convert(abc, formats)
    for kind, data in made.items():
        path = out_dir / f"{stem}.{EXTENSIONS[kind]}"
        write_atomic(path, data)  # after converting: a full disk is not a conversion failure
        files[kind] = str(path)
    return files, errors
