"""Continue a user's piece: a file (.abc, .musicxml / .xml / .mxl, .mid / .midi) in NotaGen's
training format, its bars the context the model continues, and the output marked where the new
part starts.

The conversion is the corpus's own (``calibration_data/prepare.py``): MusicXML through the
authors' xml2abc (``-d 8 -c 6 -x``), cleaning, the bar-alignment check, interleaving and rest
reduction; MIDI and plain ABC through music21 to MusicXML first, as prepare.py does for Humdrum
files and folk tunes. An ABC already interleaved (a corpus piece, a piece this toolkit wrote) is
taken as it is. Every failure is a NotaGenError of one line naming the file.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from notagen_trt.errors import NotaGenError

from . import codec
from .piece import GenerationConfig
from .prompts import Prompt, resolve_prompt

SUFFIXES = {".abc": "abc", ".musicxml": "musicxml", ".xml": "musicxml", ".mxl": "mxl", ".mid": "midi", ".midi": "midi"}
MAX_BYTES = 8 * 1024 * 1024  # a score file; a larger one is almost surely not one
DEFAULT_MORE_BARS = 16  # bar lines asked after the user's when GenerationConfig.bars is not set
MARKER = "% notagen-trt: the continuation starts here"


@dataclass(frozen=True)
class Continuation:
    """A user's piece in training format: header lines (L:, M:, K:, V: ...) and one body line
    per bar holding every voice, rest-reduced, without ``[r:]`` prefixes."""

    name: str
    header: tuple[str, ...]
    body: tuple[str, ...]
    prompt: Prompt | None = None  # the file's own prompt lines, when it has valid ones

    @property
    def bars(self) -> int:
        return len(self.body)

    def field(self, name: str) -> str | None:
        """A header field's value (``M``, ``K``, ``L``), or None."""
        return next((line[2:].strip() for line in self.header if line.startswith(f"{name}:")), None)

    def text(self, prompt: Prompt | None, config: GenerationConfig) -> str:
        """The training-format text the engine continues (``PieceRequest(text=...)``): the
        stream prefixes count down past the user's bars to ``config.bars`` more (default
        DEFAULT_MORE_BARS), so the model writes on instead of ending where the file ends."""
        more = DEFAULT_MORE_BARS if config.bars is None else config.bars
        n = len(self.body)
        body = [f"[r:{i}/{n - 1 - i + more}]{line}" for i, line in enumerate(self.body)]
        body[-1] = body[-1].replace("|]", "|")  # a final barline there, and the model would end (or copy it)
        return "".join((prompt.lines() if prompt else []) + list(self.header) + body)

    def user_bars(self) -> list[str]:
        """The user's bars as the output shows them (post-processed: every voice restored)."""
        from .postprocess import postprocess

        return [line for line in postprocess("".join(self.header + self.body)).splitlines(keepends=True)
                if line.startswith("[V:")]

    def mark(self, abc: str) -> str:
        """The output tune from the rendered piece (``render.piece_abc``): the user's bars as they
        gave them, a comment line where the new part starts, the continuation."""
        lines = abc.splitlines(keepends=True)
        body = [i for i, line in enumerate(lines) if line.startswith("[V:")]
        if len(body) >= self.bars:  # the user's last bar as they wrote it (its final barline too)
            lines[body[self.bars - 1]] = self.user_bars()[-1]
        at = body[self.bars] if len(body) > self.bars else len(lines)
        marker = f"{MARKER}, after bar {self.bars} of {self.name}\n"
        return "".join(lines[:at] + [marker] + lines[at:])


def read_continuation(path: str | Path) -> Continuation:
    """The piece in a file, ready to continue; NotaGenError (one line naming it) otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
    except FileNotFoundError:
        raise NotaGenError(f"{path}: no such file to continue") from None
    except IsADirectoryError:
        raise NotaGenError(f"{path}: is a folder; give one .abc, .musicxml, .mxl or .mid file") from None
    except OSError as exc:
        raise NotaGenError(f"{path}: cannot read it ({exc.strerror})") from None
    if data is None:
        raise NotaGenError(f"{path}: larger than {MAX_BYTES // 2**20} MB; give one score file")
    return parse_continuation(path.name, data, shown=str(path))


# A MIDI file keeps notes and timing, not bars, voices or repeats as written: music21 guesses them
# (a piece with repeats comes back played out), and the guess does not always line the voices up.
MIDI_HINT = ("a MIDI file keeps no bars or repeats as written; continue the piece's .musicxml or .abc "
             "if you have one (generate and the page write them beside the .mid)")


def parse_continuation(name: str, data: bytes, shown: str | None = None) -> Continuation:
    """The piece in ``data`` (an upload named ``name``); errors name ``shown`` (default: name)."""
    shown = shown or name
    kind = SUFFIXES.get(Path(name).suffix.lower())
    if kind is None:
        raise NotaGenError(f"{shown}: cannot continue a {Path(name).suffix or 'suffix-less'} file; "
                           f"give {', '.join(SUFFIXES)}")
    if not data.strip():
        raise NotaGenError(f"{shown}: the file is empty; give a score with at least one bar")
    try:
        if kind == "abc":
            return _from_abc(name, shown, data)
        musicxml = _mxl_score(shown, data) if kind == "mxl" else _midi_musicxml(shown, data) if kind == "midi" else data
        try:
            return _from_musicxml(name, shown, musicxml)
        except NotaGenError as exc:
            if kind == "midi":  # its bars were guessed from timing: say what to give instead
                raise NotaGenError(f"{exc}; {MIDI_HINT}") from None
            raise
    except NotaGenError:
        raise
    except Exception as exc:  # the converters raise many kinds on odd files
        raise NotaGenError(f"{shown}: could not convert it to ABC ({_why(exc)})"
                           + (f"; {MIDI_HINT}" if kind == "midi" else "")) from None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet():
    """xml2abc, abctoolkit and music21 print diagnostics; the caller reports in one line."""
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _text(shown: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older ABC collections (prepare.read_abc_text reads them so)


def _mxl_score(shown: str, data: bytes) -> bytes:
    """The score inside a compressed MusicXML archive (its container's rootfile)."""
    import zipfile
    from xml.etree import ElementTree

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            rootfile = ElementTree.fromstring(archive.read("META-INF/container.xml")).find(".//rootfile")
            return archive.read(rootfile.get("full-path"))  # type: ignore[union-attr,arg-type]
    except (zipfile.BadZipFile, KeyError, AttributeError, ElementTree.ParseError):
        raise NotaGenError(f"{shown}: not a compressed MusicXML (.mxl) archive; export it again, or give "
                           ".musicxml") from None


def _midi_musicxml(shown: str, data: bytes) -> bytes:
    """MIDI -> music21 (quantized to sixteenths and triplets, its default) -> MusicXML."""
    import music21

    from notagen_trt.calibration_data.prepare import _music21_to_musicxml

    if not data.startswith(b"MThd"):
        raise NotaGenError(f"{shown}: not a standard MIDI file (no MThd header); export it again as .mid")
    try:
        with _quiet():
            score = music21.converter.parseData(data, format="midi")
    except Exception as exc:
        raise NotaGenError(f"{shown}: music21 could not read the MIDI file ({_why(exc)})") from None
    if not score.flatten().notes:
        raise NotaGenError(f"{shown}: holds no notes to continue")
    with _quiet():
        return _music21_to_musicxml(score)


def _from_musicxml(name: str, shown: str, musicxml: bytes) -> Continuation:
    """prepare.py's route: xml2abc (music21's re-export when xml2abc trips), then NotaGen's steps."""
    import music21

    from notagen_trt.calibration_data import prepare

    with _quiet():
        try:
            abc = prepare.musicxml_to_abc(musicxml)
        except Exception:  # xml2abc trips on some MusicXML that music21 reads (prepare.convert_to_abc)
            try:
                abc = prepare.musicxml_to_abc(prepare._music21_to_musicxml(
                    music21.converter.parseData(musicxml, format="musicxml")))
            except Exception as exc:
                raise NotaGenError(f"{shown}: not a MusicXML score that xml2abc or music21 can read "
                                   f"({_why(exc)})") from None
    if "V:1" not in abc.splitlines():  # xml2abc writes no voice for a score without notes
        raise NotaGenError(f"{shown}: holds no notes to continue")
    return _prepared(name, shown, abc.splitlines(keepends=True))


def _prepared(name: str, shown: str, lines: list[str], prompt: Prompt | None = None) -> Continuation:
    """Standard ABC lines (one block per voice) -> cleaned, aligned, interleaved, rest-reduced."""
    from abctoolkit.check import check_alignment_unrotated

    from notagen_trt.calibration_data import prepare

    with _quiet():
        lines = prepare.clean_abc(lines)
        try:
            _, aligned, _ = check_alignment_unrotated(lines)
        except IndexError:  # abctoolkit's check trips on voices of unequal length instead of saying so
            aligned = False
        if not aligned:
            raise NotaGenError(f"{shown}: its voices have different numbers of bars; NotaGen's format needs every "
                               "voice to have a bar for each bar of the piece")
        header, body = prepare.interleave(prepare.shorten_annotations(lines))
    return _checked(name, shown, header, [codec.strip_stream_prefix(line) for line in body], prompt)


def abc_tunes(text: str) -> list[str]:
    """The tunes of an ABC file or collection (each from its X: line; only those with a K: line)."""
    return [t for t in re.split(r"(?m)^(?=X:)", text) if re.search(r"(?m)^K:", t)]


def _from_abc(name: str, shown: str, data: bytes) -> Continuation:
    text = _text(shown, data).replace("\r\n", "\n").replace("\r", "\n")
    tune = next(iter(abc_tunes(text)), None)  # the first tune of a collection
    if tune is None:
        raise NotaGenError(f"{shown}: no ABC tune in it (no K: line); give a tune with a header and bars")
    lines = [line for line in tune.splitlines(keepends=True) if line.strip()]
    prompt, lines = _prompt_lines(lines)
    after_k = [line for line in lines[next(i for i, x in enumerate(lines) if x.startswith("K:")) + 1:]
               if not line.startswith("%")]
    if after_k and all(codec.is_body_line(line) or re.match(r"^[A-Za-z]:", line) for line in after_k) and \
            any(codec.is_body_line(line) for line in after_k):
        return _from_interleaved(name, shown, lines, prompt)
    return _from_standard_abc(name, shown, "".join(lines), prompt)


def _prompt_lines(lines: list[str]) -> tuple[Prompt | None, list[str]]:
    """The tune's own prompt (three ``%`` lines before the header naming a valid combination),
    and its lines without any ``%`` comment (``%%`` directives stay)."""
    comments = [line[1:].strip() for line in lines[:4] if line.startswith("%") and not line.startswith("%%")]
    prompt = None
    if len(comments) >= 3:
        try:
            prompt = resolve_prompt(*comments[:3])
        except NotaGenError:
            prompt = None
    return prompt, [line for line in lines if not (line.startswith("%") and not line.startswith("%%"))]


def _from_interleaved(name: str, shown: str, lines: list[str], prompt: Prompt | None) -> Continuation:
    """NotaGen's own format (a corpus piece, or a tune this toolkit wrote): taken as it is,
    cleaned as the corpus was, its voices rest-reduced again."""
    from notagen_trt.calibration_data import prepare

    from abctoolkit.convert import unidecode_abc_lines
    from abctoolkit.utils import remove_information_field

    from .postprocess import clean_voice_names

    lines = [line if line.endswith("\n") else line + "\n" for line in lines]
    with _quiet():  # prepare.clean_abc's steps that apply to interleaved lines (it needs a V:1 block)
        lines = remove_information_field(unidecode_abc_lines(lines), ["X:", "T:", "C:", "W:", "w:", "Z:", "%%MIDI"])
    lines = [clean_voice_names(re.sub(r"%\d+\n$", "\n", line)) for line in lines]
    header, body = codec.split_lines("".join(lines))
    body = [prepare.reduce_rests(codec.strip_stream_prefix(line)) for line in body]
    return _checked(name, shown, header, body, prompt)


def _from_standard_abc(name: str, shown: str, tune: str, prompt: Prompt | None) -> Continuation:
    """Plain ABC (one block per voice, any line breaks): through music21 to MusicXML and back
    with xml2abc, as the corpus's folk tunes were, so its bars look like the training data."""
    import music21

    from notagen_trt.calibration_data import prepare

    try:
        with _quiet():
            score = music21.converter.parseData(tune, format="abc")
            musicxml = prepare._music21_to_musicxml(score)
    except Exception as exc:
        raise NotaGenError(f"{shown}: music21 could not read the ABC ({_why(exc)})") from None
    cont = _from_musicxml(name, shown, musicxml)
    return Continuation(cont.name, cont.header, cont.body, prompt)


def _checked(name: str, shown: str, header: list[str], body: list[str], prompt: Prompt | None) -> Continuation:
    if not any(prepare_has_notes(line) for line in body):
        raise NotaGenError(f"{shown}: holds no notes to continue")
    text = "".join(header + body)
    bad = sorted({c for c in text if not (32 <= ord(c) < 128 or c in "\n\t")})
    if bad:
        raise NotaGenError(f"{shown}: characters outside NotaGen's ASCII vocabulary remain after cleaning "
                           f"({''.join(bad)[:10]!r}); remove them")
    if not any(line.startswith("K:") for line in header):
        raise NotaGenError(f"{shown}: no key (K:) line in its header")
    return Continuation(name, tuple(header), tuple(line if line.endswith("\n") else line + "\n" for line in body),
                        prompt)


def prepare_has_notes(line: str) -> bool:
    """Any voice of a body line with a note (prepare.has_notes: a letter other than rests)."""
    from notagen_trt.calibration_data.prepare import has_notes

    return any(has_notes(codec.NOT_NOTES.sub("", seg))
               for seg in re.split(r"\[V:[^\]]*\]", line)[1:])
