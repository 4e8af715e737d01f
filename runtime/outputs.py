"""Write a generated piece as .abc, .musicxml, .mid and an .svg score preview.

The .abc is written first and always kept; each conversion after it may fail on its own (the
failure is reported, never raised), and every file is written atomically (temp name, rename)."""

from __future__ import annotations

from pathlib import Path

from notagen_trt.files import write_atomic

from . import abcio


def _midi(musicxml: str) -> bytes:
    import music21

    score = music21.converter.parse(musicxml, format="musicxml")
    try:
        return music21.midi.translate.streamToMidiFile(score).writestr()
    except music21.repeat.ExpanderException:
        # Generated repeats can be unbalanced; play the bars once each rather than lose the MIDI.
        for barline in list(score[music21.bar.Repeat]):
            barline.activeSite.remove(barline)
        return music21.midi.translate.streamToMidiFile(score).writestr()


def _svg(musicxml: str) -> str:
    import verovio

    verovio.enableLog(verovio.LOG_OFF)
    tk = verovio.toolkit()
    tk.setOptions({"adjustPageHeight": True, "footer": "none", "header": "none"})
    if not tk.loadData(musicxml):
        raise ValueError("verovio could not read the MusicXML")
    return tk.renderToSVG(1)


def write_piece(out_dir: str | Path, stem: str, abc: str) -> tuple[dict[str, str], dict[str, str]]:
    """({kind: path} written, {kind: error} failed) for one post-processed tune."""
    out_dir = Path(out_dir)
    files, errors = {}, {}
    write_atomic(out_dir / f"{stem}.abc", abc)
    files["abc"] = str(out_dir / f"{stem}.abc")
    try:
        musicxml = abcio.to_musicxml(abc)
    except Exception as exc:  # a malformed generated tune: keep the .abc, report the rest
        return files, {k: f"no MusicXML: {exc}" for k in ("musicxml", "midi", "svg")}
    write_atomic(out_dir / f"{stem}.musicxml", musicxml)
    files["musicxml"] = str(out_dir / f"{stem}.musicxml")
    for kind, ext, convert in (("midi", "mid", _midi), ("svg", "svg", _svg)):
        try:
            write_atomic(out_dir / f"{stem}.{ext}", convert(musicxml))
            files[kind] = str(out_dir / f"{stem}.{ext}")
        except Exception as exc:  # converters raise many types on odd scores; report, keep going
            errors[kind] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return files, errors
