"""Calibration inputs for both decoder graphs, collected by running the fp32 model over real ABC.

Quantization ranges are only as good as the inputs they are measured on. A decoder step sees
token ids *and* KV caches, so random tensors or prefill-only feeds would calibrate the wrong
distribution. For each calibration piece the fp32 ONNX graphs are run the way generation and
teacher-forced evaluation run them, and every call's inputs are kept:

- patch level: a prefill of a random number of patches (empty past), one single-patch step on
  that cache, then the rest of the window in one chunk on the grown cache;
- char level: a teacher-forcing prefill (a batch of patches, ``[bos, 16 chars]`` each, patch
  hidden state of the previous patch), and a generation-style chain for one patch: prefill of
  ``bos`` plus a random forced prefix, then single-character steps on the growing cache.

So the feeds cover KV caches of many lengths at both levels. Only numpy and onnxruntime are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from notagen_trt.config import BOS_ID
from notagen_trt.corpus import default_split, read_pieces
from notagen_trt.errors import NotaGenError
from notagen_trt.runtime.onnx_backend import OrtBackend, empty_past
from notagen_trt.manifest import model_config, read_manifest
from notagen_trt.runtime.codec import encode_windows

DEFAULT_PIECES = 32  # calibration pieces used by `notagen-trt quantize` unless told otherwise
CHAR_ROWS = 16  # patches per teacher-forcing char prefill feed
CHAR_STEPS_KEPT = 4  # single-character steps kept per generation-style chain

Feed = dict[str, np.ndarray]


@dataclass
class CalibrationFeeds:
    """Recorded inputs of every fp32 graph call, per graph, plus where they came from."""

    patch_decoder: list[Feed] = field(default_factory=list)
    char_decoder: list[Feed] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    source: str = ""

    def graph(self, name: str) -> list[Feed]:
        return getattr(self, name)

    def describe(self) -> dict:
        """What the manifest records about the calibration set."""
        def past_lengths(feeds: list[Feed]) -> list[int]:
            return sorted({int(next(v for k, v in f.items() if k.startswith("past_")).shape[2]) for f in feeds})

        return {
            "data": self.source,
            "pieces": len(self.pieces),
            "feeds": {"patch_decoder": len(self.patch_decoder), "char_decoder": len(self.char_decoder)},
            "past_lengths": {"patch_decoder": _span(past_lengths(self.patch_decoder)),
                             "char_decoder": _span(past_lengths(self.char_decoder))},
        }


def _span(values: list[int]) -> dict:
    return {"distinct": len(values), "min": min(values, default=0), "max": max(values, default=0)}


class FeedReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over recorded feeds (duck-typed:
    ONNX Runtime only calls ``get_next`` and ``rewind``)."""

    def __init__(self, feeds: list[Feed]) -> None:
        self.feeds = feeds
        self._it: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only feeds [start, end): ONNX Runtime's strided calibration (``CalibStridedMinMax``)."""
        self._it = iter(self.feeds[start_index:end_index])

    def __len__(self) -> int:
        return len(self.feeds)


def calibration_pieces(path: str | Path | None, count: int) -> tuple[list[tuple[str, str]], str]:
    """``count`` pieces spread evenly over the sorted calib split (or ``path``), and the source."""
    source = Path(path) if path else default_split("calib")
    pieces = read_pieces(source)
    if count < 1:
        raise NotaGenError(f"the calibration set needs at least one piece, got {count}")
    step = max(1, len(pieces) // count)
    return pieces[::step][:count], str(source)


def collect(model_dir: str | Path, calib: str | Path | None = None, count: int = DEFAULT_PIECES,
            seed: int = 0) -> CalibrationFeeds:
    """Run the fp32 graphs of ``model_dir`` over ``count`` calibration pieces and record the inputs."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, expect_kind="onnx")
    if manifest.get("precision", "fp32") != "fp32":
        raise NotaGenError(f"{model_dir}: calibration runs the fp32 model, this one is {manifest['precision']}; "
                           "pass the directory written by `notagen-trt export`")
    config = model_config(manifest)
    backend = OrtBackend(model_dir, "cpu")
    sessions = {"patch_decoder": backend.patch.session, "char_decoder": backend.char.session}
    names = {"patch_decoder": backend.patch.io.input_names, "char_decoder": backend.char.io.input_names}
    patch_pasts, char_pasts = len(backend.patch.io.past_names), len(backend.char.io.past_names)
    pieces, source = calibration_pieces(calib, count)
    rng = np.random.default_rng(seed)
    feeds = CalibrationFeeds(pieces=[name for name, _ in pieces], source=source)
    empty = empty_past(config, 1)

    def run(graph: str, head: list[np.ndarray], past: list[np.ndarray]) -> list[np.ndarray]:
        feed = dict(zip(names[graph], [*head, *past]))
        feeds.graph(graph).append(feed)
        return sessions[graph].run(None, feed)

    for _, text in pieces:
        window = encode_windows(text, config.patch_length)[0]
        n = len(window)
        if n < 2:
            continue
        # Patch level: prefill p0 patches, one step, then the rest as a chunk on the grown cache.
        p0 = int(rng.integers(1, n))
        hidden, *past = run("patch_decoder", [window[None, :p0]], [empty] * patch_pasts)
        hiddens = [hidden[0]]
        for chunk in (window[p0:p0 + 1], window[p0 + 1:]):
            if len(chunk):
                hidden, *past = run("patch_decoder", [chunk[None]], past)
                hiddens.append(hidden[0])
        hidden = np.concatenate(hiddens)  # [n, H]: hidden[i] starts patch i + 1

        # Char level, teacher forcing: a batch of patches, each [bos, its 16 chars].
        rows = rng.choice(np.arange(1, n), size=min(CHAR_ROWS, n - 1), replace=False)
        ids = np.concatenate([np.full((len(rows), 1), BOS_ID, np.int64), window[rows]], axis=1)
        empty_char = empty_past(config, len(rows))
        run("char_decoder", [ids, hidden[rows - 1]], [empty_char] * char_pasts)

        # Char level, generation style: bos + forced prefix, then single characters on the cache.
        i = int(rng.integers(1, n))
        j = int(rng.integers(0, 8))
        prefix = np.array([[BOS_ID, *window[i, :j]]], np.int64)
        _, *past = run("char_decoder", [prefix, hidden[i - 1:i]], [empty] * char_pasts)
        steps = list(range(j, config.patch_size - 1))
        keep = set(rng.choice(steps, size=min(CHAR_STEPS_KEPT, len(steps)), replace=False).tolist()) if steps else set()
        for k in steps:
            feed = dict(zip(names["char_decoder"], [window[i:i + 1, k:k + 1], np.zeros_like(hidden[:1]), *past]))
            if k in keep:
                feeds.char_decoder.append(feed)
            _, *past = sessions["char_decoder"].run(None, feed)
    if not feeds.patch_decoder:
        raise NotaGenError(f"{source}: no calibration piece is longer than one patch; pass a real ABC corpus")
    return feeds
