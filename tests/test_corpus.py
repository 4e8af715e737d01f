"""The committed calibration corpus matches its manifest and NotaGen's training format."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent.parent / "calibration_data"
PROMPTS = Path(__file__).resolve().parent.parent / "notagen_trt" / "data" / "prompts.txt"
SPLITS = ("train", "calib", "heldout")
BODY_LINE = re.compile(r"^\[r:(\d+)/(\d+)\]\[V:1\]")
REMOVED_FIELDS = ("X:", "T:", "C:", "W:", "w:", "Z:", "%%MIDI")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def files() -> dict[str, tuple[str, bytes]]:
    """id -> (split folder, file bytes) for every .abc file on disk."""
    found: dict[str, tuple[str, bytes]] = {}
    for split in SPLITS:
        for path in sorted((CORPUS / split).glob("*.abc")):
            assert path.stem not in found, f"{path.stem} is in {found[path.stem][0]} and {split}"
            found[path.stem] = (split, path.read_bytes())
    return found


def test_manifest_lists_every_file_and_nothing_else(manifest: dict, files: dict) -> None:
    listed = {entry["id"]: entry["split"] for entry in manifest["pieces"]}
    assert len(listed) == len(manifest["pieces"]), "duplicate ids in manifest.json"
    assert listed == {piece_id: split for piece_id, (split, _) in files.items()}
    stray = [p for p in CORPUS.glob("*/*") if p.parent.name in SPLITS and p.suffix != ".abc"]
    assert not stray, f"unexpected files in the split folders: {stray}"


def test_hashes_and_sizes_match(manifest: dict, files: dict) -> None:
    for entry in manifest["pieces"]:
        data = files[entry["id"]][1]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["id"]
        assert len(data.decode("ascii")) == entry["n_chars"], entry["id"]


def test_splits_are_disjoint_and_totals_match(manifest: dict) -> None:
    by_split = {s: [e for e in manifest["pieces"] if e["split"] == s] for s in SPLITS}
    assert sum(len(v) for v in by_split.values()) == len(manifest["pieces"])
    for split, entries in by_split.items():
        assert len(entries) >= 20, f"{split} has only {len(entries)} pieces"
        total = manifest["totals"][split]
        assert total == {"pieces": len(entries), "chars": sum(e["n_chars"] for e in entries)}
    # The same source never lands in two splits (ids encode path and tune number).
    sources = [e["source"] for e in manifest["pieces"]]
    assert len(sources) == len(set(sources))


def test_every_piece_is_in_notagen_format(manifest: dict, files: dict) -> None:
    for entry in manifest["pieces"]:
        text = files[entry["id"]][1].decode("ascii")
        check_notagen_format(entry, text)


def check_notagen_format(entry: dict, text: str) -> None:
    """Prompt lines, header lines, `[r:i/j][V:1]...` body lines, then `%end` when prompted."""
    name = entry["id"]
    assert "\r" not in text and text.endswith("\n") and "\n\n" not in text, name
    assert all(32 <= ord(c) < 128 or c in "\n\t" for c in text), name
    lines = text.split("\n")[:-1]
    prompt = entry["prompt"]
    if prompt:
        assert lines[:3] == [f"%{p}" for p in prompt], name
        assert lines[-1] == "%end", name
        lines = lines[3:-1]
    assert "%end" not in lines, name
    first_body = next(i for i, line in enumerate(lines) if line.startswith("[r:"))
    header, body = lines[:first_body], lines[first_body:]
    assert any(line == "L:1/8" for line in header), name
    assert any(line.startswith("K:") for line in header), name
    assert any(line.startswith("V:1") for line in header), name
    assert not any(line.startswith(REMOVED_FIELDS) for line in header), name
    assert not any(line.startswith("[") for line in header), name
    assert len(body) == entry["n_bars"] >= 8, name
    for i, line in enumerate(body):
        match = BODY_LINE.match(line)
        assert match, f"{name}: body line {i} does not start with [r:i/j][V:1]"
        assert (int(match.group(1)), int(match.group(2))) == (i, len(body) - 1 - i), name


def test_prompts_are_valid_combinations(manifest: dict) -> None:
    valid = {line for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line}
    prompted = [e for e in manifest["pieces"] if e["prompt"]]
    assert prompted, "no prompted pieces"
    for entry in prompted:
        assert "_".join(entry["prompt"]) in valid, entry["id"]


@pytest.mark.slow
def test_reprepared_pieces_are_byte_identical(manifest: dict, files: dict, tmp_path: Path) -> None:
    from notagen_trt.calibration_data.prepare import prepare_piece, task_from_entry

    wanted = ("bach-bwv66.6", "mozart-k458-movement2", "ryansMammoth-AcaciaReel-0001")
    entries = [e for e in manifest["pieces"] if e["id"] in wanted]
    assert len(entries) == len(wanted)
    for entry in entries:
        piece = prepare_piece(task_from_entry(entry))
        out = tmp_path / entry["split"] / f"{entry['id']}.abc"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(piece.text.encode("utf-8"))
        assert out.read_bytes() == files[entry["id"]][1], entry["id"]


def test_part_names_carry_no_layout_whitespace(files: dict) -> None:
    names = re.compile(r'\bs?nm="([^"]*)"')
    for name, (_, data) in files.items():
        for line in data.decode("ascii").splitlines():
            if line.startswith("V:"):
                for part in names.findall(line):
                    assert part and part == part.strip(" \t:") and "\\n" not in part, (name, line)


def test_plain_abc_is_read_in_notagen_format(tmp_path: Path) -> None:
    """eval --data / quantize --calib / train on plain ABC (one block per voice) read it converted
    as --continue converts a file, tune by tune (scored as it stood it gave 7.3 bits/char for a
    tune the model scores at 0.5); files already in NotaGen's format are read as they are."""
    from notagen_trt.corpus import default_split, read_pieces
    from notagen_trt.runtime.continuation import parse_continuation

    tune = "X:{n}\nT:Little Folk Tune\nM:6/8\nL:1/8\nK:G\n|:D|GAB d2B|c2A B2G|AGA B2G|A3 A2D|\nGAB d2B|c2A B2G|AGF GAF|G3 G2:|\n"
    (tmp_path / "folk.abc").write_text(tune.format(n=1) + "\n" + tune.format(n=2).replace("K:G", "K:D"))
    pieces = read_pieces(tmp_path / "folk.abc")
    assert [name for name, _ in pieces] == ["folk.abc#1", "folk.abc#2"]
    cont = parse_continuation("folk.abc", tune.format(n=1).encode())
    assert pieces[0][1] == "".join(cont.header + cont.body) and "[V:1]" in pieces[0][1] and "K:D" in pieces[1][1]
    shipped = sorted(default_split("heldout").glob("*.abc"))[0]
    assert read_pieces(shipped) == [(shipped.name, shipped.read_text())]


def test_the_trained_lengths_the_front_ends_quote_are_the_corpus_own() -> None:
    """generate and the page say when --bars goes past what the demo model learnt: from the train split."""
    from notagen_trt.corpus import LONGEST_TRAINED_BARS, SHORTEST_TRAINED_BARS, default_split, read_pieces
    from notagen_trt.runtime import codec

    lines = [len(codec.split_lines(text)[1]) for _, text in read_pieces(default_split("train"))]
    assert (min(lines) - 1, max(lines) - 1) == (SHORTEST_TRAINED_BARS, LONGEST_TRAINED_BARS)
