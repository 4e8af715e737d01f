"""Prepare the calibration / evaluation corpus: real music in NotaGen's training format.

Every piece comes from the corpus that ships with music21 and goes through the published
NotaGen data pipeline (see NOTAGEN.md): MusicXML -> ABC with abctoolkit's bundled xml2abc
(`-d 8 -c 6 -x`), cleaning, a bar-count alignment check, interleaving with `rotate_abc`, rest
reduction, and a `[r:i/j]` stream prefix on every body line. Pieces whose source fixes a valid
(period, composer, instrumentation) prompt get the three `%` prompt lines and a closing `%end`.

    python -m notagen_trt.calibration_data.prepare [--out calibration_data] [--limit N]

The output is deterministic: the same music21 / abctoolkit versions give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import re
import shutil
import sys
import types
import warnings
import zipfile
from xml.etree import ElementTree
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

import music21
from abctoolkit import xml2abc
from abctoolkit.check import check_alignment_unrotated
from abctoolkit.convert import unidecode_abc_lines
from abctoolkit.rotate import rotate_abc
from abctoolkit.utils import (
    Barlines,
    Quote_re,
    extract_barline_and_bartext_dict,
    remove_bar_no_annotations,
    remove_information_field,
)
from music21.musicxml.m21ToXml import GeneralObjectExporter
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from notagen_trt.runtime.postprocess import clean_voice_names

CORPUS_ROOT = Path(music21.__file__).parent / "corpus"
PROMPTS_FILE = resources.files("notagen_trt") / "data" / "prompts.txt"
SPLITS = ("train", "calib", "heldout")
CALIB_FRACTION = 0.05
HELDOUT_FRACTION = 0.05
MIN_SPLIT_PIECES = 20
MIN_BARS = 8
MAX_CHARS = 40_000
XML2ABC_ARGS = "-d 8 -c 6 -x"
MUSICXML_SUFFIXES = (".mxl", ".xml", ".musicxml")

# Licence notes per music21 corpus folder, stating only what the files and music21 say:
# a short note for each manifest entry, and the full note once at the top of the manifest.
M21_CORPUS_NOTE = (
    "Distributed in the music21 corpus; music21 itself is BSD-3-Clause and claims no copyright "
    "or change in licensing for corpus content."
)
PD_SCORE = "public-domain work; music21 corpus encoding, no rights statement in the file"
FOLK_TUNE = "traditional tune from a public-domain book; volunteer ABC transcription, no licence"
LICENCES: dict[str, str] = {
    "bach": PD_SCORE,
    "beethoven": PD_SCORE,
    "chopin": PD_SCORE + " (Humdrum, encoded by Craig Stuart Sapp)",
    "corelli": "public-domain work; encoding marked '(c) 2014, Creative Commons License (CC-BY)'",
    "cpebach": PD_SCORE,
    "handel": PD_SCORE,
    "haydn": PD_SCORE,
    "joplin": PD_SCORE,
    "mozart": PD_SCORE,
    "schubert": "public-domain work; music21 corpus encoding, rights field an empty 'Copyright'",
    "schumann_clara": "public-domain work; music21 corpus encoding, rights field empty or bare",
    "schumann_robert": PD_SCORE,
    "weber": "public-domain work; encoding marked 'Released to Public Domain in 1998'",
    "airdsAirs": FOLK_TUNE,
    "miscFolk": FOLK_TUNE,
    "oneills1850": FOLK_TUNE,
    "ryansMammoth": FOLK_TUNE,
}
BOOKS = {
    "airdsAirs": "James Aird, A Selection of Scotch, English, Irish and Foreign Airs (1782-1803); "
    "ABC by Jack Campin (Z: field)",
    "miscFolk": "Colonial and Civil War American fife tunes; Bruce and Stokoe, Northumbrian "
    "Minstrelsy (1882); ABC by Jack Campin (Z: field)",
    "oneills1850": "Francis O'Neill, The Music of Ireland: 1850 Melodies (1903); ABC by several "
    "volunteers named in each tune's Z: field",
    "ryansMammoth": "Ryan's Mammoth Collection (1883); ABC contributed by volunteers named in each "
    "tune's Z: field (mostly Ray Davies)",
}


def licence_notes() -> dict[str, str]:
    """The full per-collection notes written once at the top of the manifest."""
    notes = {}
    for folder, note in LICENCES.items():
        book = f" Source book: {BOOKS[folder]}." if folder in BOOKS else ""
        notes[folder] = f"{note[0].upper()}{note[1:]}.{book} {M21_CORPUS_NOTE}"
    return notes


# Left out on purpose: palestrina (licence agreement must accompany the files), josquin (GPL),
# essenFolksong (non-commercial permission only), monteverdi (Ut Orpheus edition), luca /
# ciconia (CC-BY-SA), trecento / beach (modern edition copyright), schoenberg / webern (20th c.),
# demos / theoryExercises / leadSheet (test material).
FOLK_FOLDERS = tuple(BOOKS)
SCORE_FOLDERS = tuple(k for k in LICENCES if k not in BOOKS)


@dataclass(frozen=True)
class Task:
    """One piece to prepare: a score file, or one tune (by X: number) of an ABC collection."""

    rel_path: str  # relative to music21's corpus folder, '/' separated
    tune: int | None = None

    @property
    def folder(self) -> str:
        return self.rel_path.split("/")[0]

    @property
    def piece_id(self) -> str:
        stem = re.sub(r"\.(mxl|xml|musicxml|krn|abc)$", "", self.rel_path)
        if self.folder == "oneills1850":  # tune numbers are O'Neill's own, unique across files
            stem = self.folder
        base = re.sub(r"[^A-Za-z0-9.]+", "-", stem)
        return base if self.tune is None else f"{base}-{self.tune:04d}"

    @property
    def source(self) -> str:
        tune = "" if self.tune is None else f", tune X:{self.tune}"
        return f"music21 corpus: {self.rel_path}{tune}"


@dataclass
class Piece:
    task: Task
    text: str
    n_bars: int
    prompt: tuple[str, str, str] | None
    route: str
    split: str = field(default="train")


Skip = tuple[Task, str]  # a rejected piece and the reason


class SkipPiece(Exception):
    """A piece the pipeline rejects on purpose; the message is the counted reason."""


# ----------------------------------------------------------------------------- discovery


def discover_tasks(root: Path = CORPUS_ROOT) -> tuple[list[Task], Counter]:
    """All pieces to prepare, sorted by id, and the count of source duplicates left out."""
    tasks: dict[str, Task] = {}
    dropped: Counter = Counter()
    for folder in SCORE_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if _is_score_source(path):
                task = Task(path.relative_to(root).as_posix())
                tasks[task.piece_id] = task
    for folder in FOLK_FOLDERS:
        for path in sorted((root / folder).glob("*.abc")):
            for number, _ in split_abc_tunes(read_abc_text(path)):
                task = Task(path.relative_to(root).as_posix(), number)
                if task.piece_id in tasks:  # overlapping O'Neill files, repeated X: numbers
                    dropped["duplicate tune number in source"] += 1
                    continue
                tasks[task.piece_id] = task
    return [tasks[k] for k in sorted(tasks)], dropped


def _is_score_source(path: Path) -> bool:
    """MusicXML files, plus Humdrum files with no MusicXML twin (music21 converts those)."""
    if not path.is_file():
        return False
    if path.suffix in MUSICXML_SUFFIXES:
        return True
    twins = [path.with_suffix(s) for s in MUSICXML_SUFFIXES]
    return path.suffix == ".krn" and not any(t.exists() for t in twins)


def read_abc_text(path: Path) -> str:
    """ABC collections are mostly UTF-8, a few older ones Latin-1."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_abc_tunes(text: str) -> list[tuple[int, str]]:
    """Split an ABC collection into (X: number, tune text); the file header is comments only."""
    tunes: list[tuple[int, str]] = []
    for block in re.split(r"(?m)^(?=X:)", text.replace("\r\n", "\n"))[1:]:
        match = re.match(r"X:\s*(\d+)", block)
        if match:
            tunes.append((int(match.group(1)), block))
    return tunes


# ----------------------------------------------------------------------------- conversion


def load_musicxml(task: Task, root: Path = CORPUS_ROOT) -> bytes:
    """MusicXML bytes for a task: read directly, or written by music21 for other formats."""
    path = root / task.rel_path
    if task.tune is not None:
        # The first tune with this number, as in discover_tasks.
        tune_text = next(t for n, t in split_abc_tunes(read_abc_text(path)) if n == task.tune)
        return _music21_to_musicxml(music21.converter.parseData(tune_text, format="abc"))
    if path.suffix == ".mxl":
        return read_mxl(path)
    if path.suffix in MUSICXML_SUFFIXES:
        return path.read_bytes()
    return reexport_musicxml(task, root)


def reexport_musicxml(task: Task, root: Path = CORPUS_ROOT) -> bytes:
    """Parse a score file with music21 and write it back as (normalised) MusicXML."""
    return _music21_to_musicxml(music21.converter.parse(root / task.rel_path, forceSource=True))


def read_mxl(path: Path) -> bytes:
    """The score inside a compressed .mxl: the rootfile named in META-INF/container.xml.

    xml2abc's command line takes the first `.xml` member instead, which misses archives whose
    score is stored as `.musicxml` (several Beethoven quartets here).
    """
    with zipfile.ZipFile(path) as archive:
        container = ElementTree.fromstring(archive.read("META-INF/container.xml"))
        rootfile = container.find(".//rootfile")
        return archive.read(rootfile.get("full-path"))  # type: ignore[union-attr,arg-type]


def is_musicxml_source(task: Task) -> bool:
    return task.tune is None and Path(task.rel_path).suffix in MUSICXML_SUFFIXES


def _music21_to_musicxml(stream: music21.stream.Stream) -> bytes:
    if isinstance(stream, music21.stream.Opus):
        stream = stream.scores[0]
    return GeneralObjectExporter(stream).parse()


def musicxml_to_abc(data: bytes) -> str:
    """Run abctoolkit's bundled xml2abc in-process with `-d 8 -c 6 -x` (its CLI output)."""
    options = types.SimpleNamespace(
        u=False, m=0, c=6, d=8, n=0, b=0, o="", v=0, x=True, p=[], j=False, t=False, s=False,
        v1=False, ped=True, stm=False, i=False,
    )
    out = io.StringIO()
    xml2abc.abcOut = xml2abc.ABCoutput("piece.abc", "", 0, options)  # module global it writes to
    xml2abc.abcOut.outfile = out
    xml2abc.Parser(options).parse(io.BytesIO(data))
    return out.getvalue()


# ----------------------------------------------------------------------------- NotaGen steps


def clean_abc(abc_lines: list[str]) -> list[str]:
    """NotaGen's cleaning (data/2_data_preprocess.py), up to the alignment check."""
    lines = [line for line in abc_lines if line.strip() != ""]
    lines = unidecode_abc_lines(lines)
    lines = remove_information_field(lines, ["X:", "T:", "C:", "W:", "w:", "Z:", "%%MIDI"])
    lines = remove_bar_no_annotations(lines)
    for i, line in enumerate(lines):
        if not (re.search(r"^[A-Za-z]:", line) or line.startswith("%")):
            lines[i] = line.replace(r"\"", "")
    for i, line in enumerate(lines):
        for quoted in re.findall(Quote_re, line):
            if any(barline in quoted for barline in Barlines):  # would split bars wrongly
                line = line.replace(quoted, "")
        lines[i] = line
    # Part names keep MusicXML's layout whitespace through xml2abc (nm="\\n\t\t\t:Viola"); a
    # model trained on them writes such names back.
    return [clean_voice_names(line) for line in lines]


def shorten_annotations(abc_lines: list[str]) -> list[str]:
    """Drop empty quotes; squeeze repeated symbols in "^.."/"_.." text, drop it if > 40 chars."""
    out = []
    for line in abc_lines:
        for quoted in re.findall(r'"[^"]*"', line):
            if quoted == '""':
                line = line.replace(quoted, "")
            elif quoted[1] in "^_":
                short = re.sub(r"([^a-zA-Z0-9])\1+", r"\1", quoted)
                line = line.replace(quoted, short if len(short) <= 40 else "")
        out.append(line)
    return out


def count_aligned_bars(abc_lines: list[str]) -> int:
    """The bar count shared by all voices; a piece whose voices disagree is skipped."""
    _, bar_count_equal, _ = check_alignment_unrotated(abc_lines)
    if not bar_count_equal:
        raise SkipPiece("unequal bar counts across voices")
    _, _, _, bar_texts, _ = extract_barline_and_bartext_dict(abc_lines)
    return len(bar_texts["V:1"])


def has_notes(bar: str) -> bool:
    """NotaGen's rest-reduction test: any letter other than the rests z Z x X."""
    return any(c.isalpha() and c not in "zZxX" for c in bar)


def reduce_rests(body_line: str) -> str:
    """Drop voices whose bar holds only rests; V:1 always stays so no line is empty."""
    segments = re.split(r"(?=\[V:\d+\])", body_line.rstrip("\n"))
    kept = [s for s in segments if s and (s.startswith("[V:1]") or has_notes(s[s.index("]") + 1:]))]
    return "".join(kept) + "\n"


def interleave(abc_lines: list[str]) -> tuple[list[str], list[str]]:
    """(header lines, body lines): one body line per bar holding every voice, rest-reduced."""
    rotated = rotate_abc(list(abc_lines))
    first_body = next(i for i, line in enumerate(rotated) if line.startswith("[V:"))
    body = [reduce_rests(line) for line in rotated[first_body:]]
    prefixed = [f"[r:{i}/{len(body) - 1 - i}]{line}" for i, line in enumerate(body)]
    return rotated[:first_body], prefixed


def render(header: list[str], body: list[str], prompt: tuple[str, str, str] | None) -> str:
    """The piece's text: prompt lines, header, stream-prefixed body, then `%end` if prompted."""
    top = [f"%{p}\n" for p in prompt] if prompt else []
    end = ["%end\n"] if prompt else []
    return "".join(top + header + body + end)


def check_text(text: str) -> None:
    """Only printable ASCII plus tab/newline: the model's vocabulary is 128 chars, 0-2 special."""
    bad = [c for c in text if not (32 <= ord(c) < 128 or c in "\n\t")]
    if bad:
        raise SkipPiece("non-ASCII or control characters after cleaning")
    if len(text) > MAX_CHARS:
        raise SkipPiece(f"longer than {MAX_CHARS} chars")


# ----------------------------------------------------------------------------- prompts


def load_valid_prompts(path: Traversable = PROMPTS_FILE) -> set[tuple[str, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {tuple(line.split("_")) for line in lines if line.strip()}  # type: ignore[misc]


BACH = ("Baroque", "Bach, Johann Sebastian")
QUARTET_COMPOSERS = {
    "beethoven": ("Classical", "Beethoven, Ludwig van"),
    "haydn": ("Classical", "Haydn, Joseph"),
    "mozart": ("Classical", "Mozart, Wolfgang Amadeus"),
}


def prompt_for(task: Task) -> tuple[str, str, str] | None:
    """The (period, composer, instrumentation) the source fixes, or None when it fixes none."""
    name = task.rel_path
    if task.folder == "bach":
        return (*BACH, "Keyboard") if "bwv846" in name else (*BACH, "Choral")
    if task.folder in QUARTET_COMPOSERS:  # string quartets, except Mozart's K. 545 sonata
        return (*QUARTET_COMPOSERS[task.folder], "Keyboard" if "k545" in name else "Chamber")
    if task.folder == "corelli":  # trio sonata op. 3 no. 1
        return ("Baroque", "Corelli, Arcangelo", "Chamber")
    if task.folder == "chopin":  # mazurka
        return ("Romantic", "Chopin, Frederic", "Keyboard")
    if task.folder == "schubert":  # Der Lindenbaum, a Lied
        return ("Romantic", "Schubert, Franz", "Art Song")
    if task.folder == "schumann_robert":  # Dichterliebe songs; op. 41 string quartet
        return ("Romantic", "Schumann, Robert", "Chamber" if "opus41" in name else "Art Song")
    return None  # folk tunes; composers or genres with no valid combination


# ----------------------------------------------------------------------------- one piece


def prepare_piece(task: Task, valid_prompts: set[tuple[str, str, str]] | None = None) -> Piece:
    """Run the whole pipeline on one piece; raises SkipPiece (or any error) to reject it."""
    valid_prompts = load_valid_prompts() if valid_prompts is None else valid_prompts
    prompt = prompt_for(task)
    if prompt is not None and prompt not in valid_prompts:
        raise ValueError(f"{task.piece_id}: prompt {prompt} is not in {PROMPTS_FILE.name}")
    # abctoolkit prints diagnostics and xml2abc logs to stderr; keep the progress bar readable.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        abc, route = convert_to_abc(task)
        if "V:1" not in abc.splitlines():
            raise SkipPiece("xml2abc wrote no voice")
        lines = _stage("cleaning", lambda: clean_abc(abc.splitlines(keepends=True)))
        n_bars = _stage("alignment check", lambda: count_aligned_bars(lines))
        if n_bars < MIN_BARS:
            raise SkipPiece(f"fewer than {MIN_BARS} bars")
        lines = shorten_annotations(lines)
        header, body = _stage("interleaving", lambda: interleave(lines))
    text = render(header, body, prompt)
    check_text(text)
    return Piece(task, text, len(body), prompt, route)


def convert_to_abc(task: Task) -> tuple[str, str]:
    """Standard ABC for a task and the route it took to get there."""
    xml = _stage("music21/MusicXML", lambda: load_musicxml(task))
    route = "MusicXML" if is_musicxml_source(task) else "music21 -> MusicXML"
    try:
        return musicxml_to_abc(xml), f"{route} -> xml2abc"
    except Exception:  # noqa: BLE001 - xml2abc trips on some MusicXML that music21 reads
        if not is_musicxml_source(task):
            raise SkipPiece("xml2abc failed") from None
    # Let music21 normalise the MusicXML (e.g. a lyric numbered "chorus"), then convert again.
    xml = _stage("music21 re-export", lambda: reexport_musicxml(task))
    abc = _stage("xml2abc", lambda: musicxml_to_abc(xml))
    return abc, "MusicXML -> music21 re-export -> xml2abc"


def _stage(name: str, step):  # type: ignore[no-untyped-def]
    """Name the stage in the skip reason so failures are counted by where they happen."""
    try:
        return step()
    except SkipPiece:
        raise
    except Exception as error:  # noqa: BLE001 - one bad piece must never stop the run
        raise SkipPiece(f"{name} failed ({type(error).__name__})") from error


def _worker(task: Task) -> tuple[Task, Piece | None, str | None]:
    try:
        return task, prepare_piece(task, _VALID_PROMPTS), None
    except SkipPiece as skip:
        return task, None, str(skip)
    except Exception as error:  # noqa: BLE001
        return task, None, f"unexpected {type(error).__name__}"


_VALID_PROMPTS: set[tuple[str, str, str]] = set()


def _init_worker() -> None:
    global _VALID_PROMPTS
    _VALID_PROMPTS = load_valid_prompts()
    warnings.simplefilter("ignore")  # music21 warns on every odd ABC construct


# ----------------------------------------------------------------------------- corpus


def split_of(piece_id: str) -> tuple[str, float]:
    """Deterministic split from the id's hash, stable when other pieces come or go."""
    u = int(hashlib.sha256(piece_id.encode()).hexdigest()[:16], 16) / 2**64
    if u < CALIB_FRACTION:
        return "calib", u
    if u < CALIB_FRACTION + HELDOUT_FRACTION:
        return "heldout", u
    return "train", u


def assign_splits(pieces: list[Piece]) -> None:
    """Hash split, then top up calib/heldout from the lowest-hash train pieces to the minimum."""
    keyed = sorted(((split_of(p.task.piece_id)[1], p.task.piece_id, p) for p in pieces))
    for _, _, piece in keyed:
        piece.split = split_of(piece.task.piece_id)[0]
    for split in ("calib", "heldout"):
        missing = MIN_SPLIT_PIECES - sum(p.split == split for _, _, p in keyed)
        for _, _, piece in keyed:
            if missing <= 0:
                break
            if piece.split == "train":
                piece.split, missing = split, missing - 1


def drop_duplicates(pieces: list[Piece], skipped: list[Skip]) -> list[Piece]:
    """Identical prepared text (the same tune printed twice) is kept once, first id wins."""
    first: dict[str, str] = {}
    unique = []
    for piece in sorted(pieces, key=lambda p: p.task.piece_id):
        if piece.text in first:
            skipped.append((piece.task, f"identical to {first[piece.text]}"))
            continue
        first[piece.text] = piece.task.piece_id
        unique.append(piece)
    return unique


def select(tasks: list[Task], limit: int | None) -> list[Task]:
    """An evenly spaced, deterministic subset, so a small run still spans every collection."""
    if not limit or limit >= len(tasks):
        return tasks
    return [tasks[i * len(tasks) // limit] for i in range(limit)]


def run_pipeline(tasks: list[Task], workers: int) -> tuple[list[Piece], list[Skip]]:
    pieces: list[Piece] = []
    skipped: list[Skip] = []
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )
    with Progress(*columns) as progress, multiprocessing.Pool(workers, _init_worker) as pool:
        bar = progress.add_task("preparing pieces", total=len(tasks))
        for task, piece, reason in pool.imap_unordered(_worker, tasks, chunksize=4):
            if piece is None:
                skipped.append((task, reason or "unknown"))
            else:
                pieces.append(piece)
            progress.advance(bar)
    return pieces, skipped


def write_corpus(out: Path, pieces: list[Piece], skipped: list[Skip], reasons: Counter) -> dict:
    """Write one file per piece and the manifest; stale .abc files from older runs go first."""
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)
    entries = []
    for piece in sorted(pieces, key=lambda p: p.task.piece_id):
        data = piece.text.encode("utf-8")
        (out / piece.split / f"{piece.task.piece_id}.abc").write_bytes(data)
        entries.append(manifest_entry(piece, data))
    manifest = {
        "description": "Real music in NotaGen's interleaved ABC training format (see README.md).",
        "tools": tool_versions(),
        "pipeline": {
            "xml2abc_options": XML2ABC_ARGS,
            "min_bars": MIN_BARS,
            "max_chars": MAX_CHARS,
            "split_fractions": {"calib": CALIB_FRACTION, "heldout": HELDOUT_FRACTION},
            "min_split_pieces": MIN_SPLIT_PIECES,
        },
        "totals": {
            split: {
                "pieces": sum(e["split"] == split for e in entries),
                "chars": sum(e["n_chars"] for e in entries if e["split"] == split),
            }
            for split in SPLITS
        },
        "licenses": licence_notes(),
        "skipped": dict(sorted(reasons.items())),
        "skipped_pieces": [
            {"id": task.piece_id, "source": task.source, "reason": reason}
            for task, reason in sorted(skipped, key=lambda s: s[0].piece_id)
        ],
        "pieces": entries,
    }
    (out / "manifest.json").write_text(dump_manifest(manifest), encoding="utf-8")
    return manifest


def dump_manifest(manifest: dict) -> str:
    """Indented JSON with one line per piece, so the file stays small and diffs stay readable."""
    lines = ["{"]
    for i, (key, value) in enumerate(manifest.items()):
        comma = "," if i < len(manifest) - 1 else ""
        if isinstance(value, list):
            items = [json.dumps(item) for item in value]
            body = ",\n  ".join(items)
            lines.append(f' "{key}": [\n  {body}\n ]{comma}' if items else f' "{key}": []{comma}')
        else:
            text = json.dumps(value, indent=1).replace("\n", "\n ")
            lines.append(f' "{key}": {text}{comma}')
    return "\n".join(lines) + "\n}\n"


def manifest_entry(piece: Piece, data: bytes) -> dict:
    task = piece.task
    return {
        "id": task.piece_id,
        "split": piece.split,
        "source": task.source,
        "path": task.rel_path,
        "tune": task.tune,
        "license": LICENCES[task.folder],
        "sha256": hashlib.sha256(data).hexdigest(),
        "n_chars": len(piece.text),
        "n_bars": piece.n_bars,
        "conversion": piece.route,
        "prompt": list(piece.prompt) if piece.prompt else None,
    }


def tool_versions() -> dict[str, str]:
    return {
        "music21": music21.__version__,
        "abctoolkit": metadata.version("abctoolkit"),
        "xml2abc": str(xml2abc.VERSION),
    }


def task_from_entry(entry: dict) -> Task:
    """Rebuild a piece's task from its manifest entry (used to re-prepare single pieces)."""
    return Task(entry["path"], entry["tune"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: this package's folder, the shipped corpus)")
    parser.add_argument("--limit", type=int, default=None,
                        help="prepare only N evenly spaced pieces (for development; needs --out)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.out is None:
        parser.error("--limit needs --out: a partial run must not replace the shipped corpus")
    args.out = args.out or Path(__file__).resolve().parent
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks, reasons = discover_tasks()
    tasks = select(tasks, args.limit)
    pieces, skipped = run_pipeline(tasks, args.workers)
    pieces = drop_duplicates(pieces, skipped)
    # Count "identical to <id>" under one reason; the manifest lists each piece's own reason.
    reasons.update(re.sub(r"^identical to .*", "identical to another piece", r) for _, r in skipped)
    assign_splits(pieces)
    manifest = write_corpus(args.out, pieces, skipped, reasons)
    for split, total in manifest["totals"].items():
        print(f"{split:8s} {total['pieces']:6d} pieces {total['chars']:10,d} chars")
    print(f"skipped {sum(reasons.values())} pieces:")
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {count:6d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
