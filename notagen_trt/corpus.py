"""Reading ABC pieces (a file, or a folder of ``.abc`` files) for training, evaluation and
calibration, in NotaGen's format (plain ABC is converted)."""

from __future__ import annotations

from pathlib import Path

from notagen_trt.errors import NotaGenError


def read_pieces(path: str | Path) -> list[tuple[str, str]]:
    """[(name, text)] sorted by name, from one ``.abc`` file or every ``*.abc`` under a folder."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.abc"))
    else:
        raise NotaGenError(f"{path}: no such file or folder of .abc pieces")
    if not files:
        raise NotaGenError(f"{path}: holds no .abc files")
    pieces = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise NotaGenError(f"{f}: not a text file; expected a piece in ABC notation") from None
        # Every ABC tune has a key field: without one the file is something else (it would be
        # scored or calibrated on as if it were music).
        if not any(line.startswith("K:") or line.startswith("[K:") for line in text.splitlines()):
            raise NotaGenError(f"{f}: not a piece in ABC notation (no K: key field)")
        pieces += _training_format(str(f.relative_to(path)) if path.is_dir() else f.name, text, f)
    return pieces


def _training_format(name: str, text: str, path: Path) -> list[tuple[str, str]]:
    """A file's pieces in NotaGen's format (voices interleaved bar by bar, ``[V:1]...`` lines): as
    it is when it is in it; plain ABC (one block per voice: scored as it stood, it gave a number
    that meant nothing) converted tune by tune as ``generate --continue`` converts a file."""
    from notagen_trt.runtime.codec import is_body_line

    if any(is_body_line(line) for line in text.splitlines()):
        return [(name, text)]
    from notagen_trt.runtime.continuation import abc_tunes, parse_continuation

    tunes = abc_tunes(text)
    out = []
    for i, tune in enumerate(tunes):
        shown = f"{path} (tune {i + 1})" if len(tunes) > 1 else str(path)
        cont = parse_continuation(path.name, tune.encode(), shown=shown)
        out.append((f"{name}#{i + 1}" if len(tunes) > 1 else name, "".join(cont.header + cont.body)))
    return out


def default_split(split: str) -> Path:
    """A split of the corpus that ships with the toolkit: train, calib or heldout."""
    from importlib import resources

    return Path(str(resources.files("notagen_trt.calibration_data").joinpath(split)))


def trained_prompt_counts() -> dict[tuple[str, str, str], int]:
    """How many pieces of the shipped train split (the demo model's training data) carry each
    (period, composer, instrumentation) prompt."""
    import collections
    import json

    manifest = json.loads((default_split("train").parent / "manifest.json").read_text(encoding="utf-8"))
    return dict(collections.Counter(tuple(p["prompt"]) for p in manifest["pieces"]
                                    if p.get("split") == "train" and p.get("prompt")))


# What the demo model learnt from the shipped corpus, which the front ends say when a request
# goes past it: the shortest pieces are 8 bars ([r:0/7], prepare.py's MIN_BARS), the longest 410, and a prompt
# carried by fewer than RARE_PROMPT training pieces may give pieces that never write the end.
SHORTEST_TRAINED_BARS = 7
LONGEST_TRAINED_BARS = 409  # the longest training piece has 410 body lines ([r:0/409])
RARE_PROMPT = 10


def rare_prompt(period: str, composer: str, instrumentation: str) -> tuple[int, tuple[str, str, str], int] | None:
    """(training pieces with this prompt, the most common prompt, its pieces) when the demo
    model saw the prompt in fewer than RARE_PROMPT pieces; None otherwise."""
    counts = trained_prompt_counts()
    seen = counts.get((period, composer, instrumentation), 0)
    if seen >= RARE_PROMPT:
        return None
    best = max(counts, key=counts.get)
    return seen, best, counts[best]
