"""NotaGen's patch codec: ABC text <-> 16-character patches of ASCII ids.

Rules (NOTAGEN.md): header lines are patchified one line at a time; body lines are split into
bars on barline tokens, the barline opening the next segment; a segment gets an eos char only if
its length is not a multiple of 16, is cut into 16-char patches and the last is padded with 0.
The sequence is BOS patch + header + body + EOS patch.
"""

from __future__ import annotations

import re

import numpy as np

from notagen_trt.config import BOS_ID, EOS_ID, PAD_ID, PATCH_SIZE, VOCAB_SIZE

BARLINES = ("|:", "::", ":|", "[|", "||", "|]", "|")  # longest first where they share a prefix
_BARLINE_SPLIT = re.compile("(" + "|".join(map(re.escape, BARLINES)) + ")")
_STREAM_PREFIX = re.compile(r"^\[r:[^\]]*\]")
# What a bar holds besides its notes: inline fields ([K:D]), annotations ("^text"), decorations (!p!).
NOT_NOTES = re.compile(r"\[[A-Za-z]:[^\]]*\]|\"[^\"]*\"|![^!]*!")

BOS_PATCH = chr(BOS_ID) * (PATCH_SIZE - 1) + chr(EOS_ID)
EOS_PATCH = chr(BOS_ID) + chr(EOS_ID) * (PATCH_SIZE - 1)


def is_body_line(line: str) -> bool:
    return line.startswith("[V:") or line.startswith("[r:")


def split_lines(abc: str) -> tuple[list[str], list[str]]:
    """(header lines, body lines), each keeping its newline; blank lines are dropped. The body
    starts at the first line that begins with ``[V:`` or ``[r:``. A final line without a
    newline keeps none (generation continues it)."""
    lines = [line for line in abc.splitlines(keepends=True) if line.strip("\n")]
    start = next((i for i, line in enumerate(lines) if is_body_line(line)), len(lines))
    return lines[:start], lines[start:]


def add_stream_prefixes(body: list[str]) -> list[str]:
    """Prefix body line i of n with ``[r:i/n-1-i]`` (line index / lines remaining)."""
    n = len(body)
    return [f"[r:{i}/{n - 1 - i}]{line}" for i, line in enumerate(body)]


def strip_stream_prefix(line: str) -> str:
    return _STREAM_PREFIX.sub("", line, count=1)


def split_bars(line: str) -> list[str]:
    """One body line -> bar segments, each barline attached to the start of the segment that
    follows it; the line's trailing barline + newline stays on the last bar."""
    parts = [p for p in _BARLINE_SPLIT.split(line) if p]
    if len(parts) == 1:
        return parts
    segments = [] if parts[0] in BARLINES else [parts.pop(0)]
    for i in range(0, len(parts), 2):
        segments.append("".join(parts[i : i + 2]))
    # The tail after the last barline (e.g. "|\n") is no bar of its own unless a voice starts there.
    if len(segments) > 1 and "V" not in segments[-1]:
        tail = segments.pop()
        segments[-1] += tail
    return segments


def segment_patches(segment: str, open_end: bool = False) -> list[str]:
    """Cut a segment into 16-char patches. A closed segment gets an eos char unless its length
    is a multiple of 16; an open one (the bar being generated) gets none."""
    if not open_end and len(segment) % PATCH_SIZE:
        segment += chr(EOS_ID)
    return [segment[i : i + PATCH_SIZE] for i in range(0, len(segment), PATCH_SIZE)]


def _patches_for(header: list[str], body: list[str], open_end: bool) -> list[str]:
    patches = [BOS_PATCH]
    for line in header:
        patches += segment_patches(line)
    bars = [bar for line in body for bar in split_bars(line)]
    for i, bar in enumerate(bars):
        patches += segment_patches(bar, open_end=open_end and i == len(bars) - 1)
    return patches


def to_ids(patch: str, pad: bool = True) -> list[int]:
    ids = [ord(c) for c in patch]
    if any(i >= VOCAB_SIZE for i in ids):
        bad = next(c for c in patch if ord(c) >= VOCAB_SIZE)
        raise ValueError(f"character {bad!r} is not ASCII; NotaGen's vocabulary is the 128 ASCII codes")
    return ids + [PAD_ID] * (PATCH_SIZE - len(ids)) if pad else ids


def encode_train(abc: str, stream: bool = True) -> np.ndarray:
    """A whole tune -> [n, 16] int64 patches (BOS + header + body + EOS), as for training and
    teacher-forced evaluation. ``stream`` adds the ``[r:i/j]`` prefixes unless already there."""
    header, body = split_lines(abc)
    body = [line if line.endswith("\n") else line + "\n" for line in body]
    if stream and body and not body[0].startswith("[r:"):
        body = add_stream_prefixes(body)
    patches = _patches_for(header, body, open_end=False) + [EOS_PATCH]
    return np.array([to_ids(p) for p in patches], dtype=np.int64)


def encode_generate(abc: str, open_end: bool = True) -> tuple[np.ndarray, list[int]]:
    """Text generated so far -> (full patches [n, 16], open prefix of the patch in progress).

    The last bar gets no eos and a trailing partial patch is left unpadded, so generation
    continues it (its chars become the char decoder's prefix). ``open_end=False``: the last bar
    is closed (a bar taken back leaves the one before it whole); the next patch starts anew."""
    header, body = split_lines(abc)
    patches = _patches_for(header, body, open_end=open_end)
    prefix: list[int] = []
    if body and len(patches[-1]) < PATCH_SIZE:
        prefix = to_ids(patches.pop(), pad=False)
    full = np.array([to_ids(p) for p in patches], dtype=np.int64).reshape(-1, PATCH_SIZE)
    return full, prefix


def decode_patch(patch: np.ndarray | list[int]) -> str:
    """Characters of one patch up to its first eos; pad and bos ids are skipped."""
    ids = patch.tolist() if isinstance(patch, np.ndarray) else list(patch)  # 16 ints: plain Python is fastest
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    return bytes(i for i in ids if i > EOS_ID).decode("ascii")


def decode(patches: np.ndarray | list) -> str:
    return "".join(decode_patch(p) for p in patches)


def is_eos_patch(patch: np.ndarray | list[int]) -> bool:
    return int(patch[0]) == BOS_ID and int(patch[1]) == EOS_ID


def clean_patch(patch: np.ndarray | list[int]) -> np.ndarray:
    """A generated patch as it enters the context: everything after its first eos becomes pad."""
    patch = np.asarray(patch, dtype=np.int64).copy()
    hits = np.flatnonzero(patch == EOS_ID)
    if hits.size:
        patch[hits[0] + 1 :] = PAD_ID
    return patch


def encode_windows(abc: str, patch_length: int, stream: bool = True) -> list[np.ndarray]:
    """Teacher-forcing windows of at most ``patch_length`` patches that together predict every
    patch of the tune exactly once: the first window is the tune's head; each later one repeats
    BOS + header and continues with the next whole body lines (as the context rebuild does)."""
    header, body = split_lines(abc)
    body = [line if line.endswith("\n") else line + "\n" for line in body]
    if stream and body and not body[0].startswith("[r:"):
        body = add_stream_prefixes(body)
    head = _patches_for(header, [], open_end=False)
    room = patch_length - len(head)
    if room < 2:
        raise ValueError(f"the header alone needs {len(head)} patches; the model holds {patch_length}")
    lines = [[p for bar in split_bars(line) for p in segment_patches(bar)] for line in body]
    lines[-1:] = [lines[-1] + [EOS_PATCH]] if lines else [[EOS_PATCH]]
    windows, chunk = [], []
    for line in lines:
        if chunk and len(chunk) + len(line) > room:
            windows.append(head + chunk)
            chunk = []
        while len(line) > room:  # one line longer than a window: cut it
            windows.append(head + line[:room])
            line = line[room:]
        chunk += line
    windows.append(head + chunk)
    return [np.array([to_ids(p) for p in w], dtype=np.int64) for w in windows]
