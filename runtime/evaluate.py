"""Accuracy of an ONNX model directory of any precision (numpy + ONNX Runtime, never torch).

- Teacher-forced bits per character over ``encode_windows`` windows, scored exactly like
  ``export/evaluate.py`` (every non-pad character of patches 1..n-1), with prefill calls on an
  empty past: the patch graph over a window, then the char graph with one row per patch,
  ``[bos, its 16 chars]`` as input ids and the previous patch's hidden state as ``patch_hidden``.
- Against a reference (the fp32 directory a variant's manifest names as its source): top-1
  agreement and max / mean |logit diff| over the same scored positions, each pipeline run end to
  end on its own hidden states.
- A variant whose engine-ready graphs have a CPU form of their own (int8-wo: MatMulNBits, whose
  weights and int8 activations are not the QDQ step graphs'; fp16: the fused attention ONNX
  Runtime runs on CUDA too): the same top-1 agreement through those graphs, which output ids,
  not logits. Each patch position is drawn greedily (top-k 1) after the true characters before
  it, one row per position, by both directories on the same true context
  (``cpu_form_top1_agreement``; the gate holds it to the top-1 limit too). fp16 graphs run
  slowly on a CPU, so an fp16 variant's form is scored on ``FP16_FORM_PIECES`` of the pieces,
  spread over them (``cpu_form_pieces`` says how many).
- Validity of N seeded generated pieces: post-processed, they must parse with music21, convert
  with abc2xml, and every bar but each voice's first and last must last what the meter says.
The pass / fail gate of each precision is ``engines/gates.py``, beside the code that quantizes.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from notagen_trt.config import BOS_ID, PAD_ID, PATCH_SIZE, VOCAB_SIZE
from notagen_trt.engines.gates import gate
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import MANIFEST_NAME, manifest_digest, read_manifest

from .codec import NOT_NOTES, encode_windows
from .executor import Executor
from .onnx_backend import Device, OrtBackend, empty_past
from .piece import PatchRequest
from .sampling import SamplingParams

ROWS_PER_CALL = 1024  # char-graph rows (patches) per call


def reference_dir(model_dir: str | Path) -> Path | None:
    """The fp32 directory a variant was made from (checked against the recorded manifest hash),
    or None when ``model_dir`` is itself fp32."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, expect_kind="onnx")
    if manifest.get("precision", "fp32") == "fp32":
        return None
    source = manifest.get("source") or {}
    ref = source.get("model_dir")
    if not ref or not (Path(ref) / MANIFEST_NAME).is_file():
        raise NotaGenError(f"{model_dir / MANIFEST_NAME}: the fp32 source {ref!r} is missing; copy it back or "
                           "re-run `notagen-trt quantize`")
    if manifest_digest(ref) != source.get("manifest_sha256"):
        raise NotaGenError(f"{model_dir}: its fp32 source {ref} changed since it was quantized (manifest hash "
                           "differs); re-run `notagen-trt quantize` on it")
    return Path(ref)


@dataclass
class TeacherForced:
    bits_per_char: float
    chars: int
    top1_agreement: float | None  # None without a reference (fp32 is its own reference)
    max_abs_logit_diff: float | None
    mean_abs_logit_diff: float | None
    reference_bits_per_char: float | None = None


def teacher_forced(model_dir: str | Path | OrtBackend, pieces: list[str],
                   reference: str | Path | OrtBackend | None = None, device: Device = "cpu",
                   threads: int | None = None) -> TeacherForced:
    """Bits per character of ``model_dir`` (or a loaded backend) on ``pieces``; agreement with
    ``reference`` (a directory or a loaded backend) if given."""
    load = lambda d: d if isinstance(d, OrtBackend) or d is None else OrtBackend(d, device, threads)  # noqa: E731
    model, ref = load(model_dir), load(reference)
    length = model.config.patch_length
    if ref is not None and ref.config != model.config:
        raise NotaGenError(f"{ref.model_dir}: its model config differs from {model.model_dir}'s; pass the variant's "
                           "own source")
    windows = [w for text in pieces for w in encode_windows(text, length) if len(w) > 1]
    if not windows:
        raise NotaGenError("no piece is longer than one patch; nothing to score")
    nll, ref_nll, chars, agree, max_diff, sum_diff = 0.0, 0.0, 0, 0, 0.0, 0.0
    rows: list[tuple[np.ndarray, ...]] = []

    def flush() -> None:
        nonlocal nll, ref_nll, chars, agree, max_diff, sum_diff
        ids, targets = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        logits = _char_logits(model, ids, np.concatenate([r[2] for r in rows]))
        mask = targets != PAD_ID
        nll += float(_nll(logits, targets)[mask].sum())
        chars += int(mask.sum())
        if ref is not None:
            expected = _char_logits(ref, ids, np.concatenate([r[3] for r in rows]))
            ref_nll += float(_nll(expected, targets)[mask].sum())
            agree += int((logits.argmax(-1) == expected.argmax(-1))[mask].sum())
            diff = np.abs(logits - expected)[mask]
            max_diff = max(max_diff, float(diff.max(initial=0.0)))
            sum_diff += float(diff.sum(dtype=np.float64))
        rows.clear()

    pending = 0
    for w in windows:
        ids = np.concatenate([np.full((len(w) - 1, 1), BOS_ID, np.int64), w[1:]], axis=1)
        hidden = _patch_hidden(model, w)[:-1]
        rows.append((ids, w[1:], hidden, _patch_hidden(ref, w)[:-1] if ref is not None else hidden))
        pending += len(w) - 1
        if pending >= ROWS_PER_CALL:
            flush()
            pending = 0
    if rows:
        flush()
    if ref is None:
        return TeacherForced(nll / chars / math.log(2), chars, None, None, None)
    bits = 1 / chars / math.log(2)
    return TeacherForced(nll * bits, chars, agree / chars, max_diff, sum_diff / (chars * 128), ref_nll * bits)


def _patch_hidden(backend: OrtBackend, window: np.ndarray) -> np.ndarray:
    g = backend.patch
    empty = empty_past(backend.config, 1)
    feeds = {g.io.head_names[0]: window[None], **{n: empty for n in g.io.past_names}}
    return g.session.run([g.io.output], feeds)[0][0]


def _char_logits(backend: OrtBackend, ids: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Logits [rows, 16, 128] predicting each row's 16 characters (positions 0..15)."""
    g = backend.char
    ids_name, hidden_name = g.io.head_names
    out = []
    for start in range(0, len(ids), ROWS_PER_CALL):
        chunk = ids[start:start + ROWS_PER_CALL]
        empty = empty_past(backend.config, len(chunk))
        feeds = {ids_name: chunk, hidden_name: hidden[start:start + ROWS_PER_CALL].astype(np.float32),
                 **{n: empty for n in g.io.past_names}}
        out.append(g.session.run([g.io.output], feeds)[0][:, :-1].astype(np.float32))
    return np.concatenate(out)


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) in nats, computed in float64."""
    x = logits.astype(np.float64)
    top = x.max(-1, keepdims=True)
    logz = top[..., 0] + np.log(np.exp(x - top).sum(-1))
    return logz - np.take_along_axis(x, targets[..., None], -1)[..., 0]


# ---------------------------------------------------------------- validity of generated pieces

@dataclass
class PieceCheck:
    seed: int
    patches: int
    stop_reason: str
    music21: bool
    abc2xml: bool
    bars_match_meter: bool
    error: str = ""

    @property
    def valid(self) -> bool:
        return self.music21 and self.abc2xml and self.bars_match_meter


def generated_validity(backend: OrtBackend, num_pieces: int = 8, max_patches: int | None = 2048) -> list[PieceCheck]:
    """Generate pieces with seeds 0..num_pieces-1 (unconditional) and check each one."""
    from .abcio import check
    from .engine import Engine, PieceRequest
    from .piece import GenerationConfig
    from .postprocess import postprocess

    configs = [GenerationConfig(seed=s, max_patches=max_patches) for s in range(num_pieces)]
    out = []
    with Engine(backend.executor(backend.default_rows)) as engine:
        pieces = engine.generate(PieceRequest(None, c) for c in configs)
    for config, piece in zip(configs, pieces):
        abc = postprocess(piece.text)
        parsed = check(abc)
        bars_ok, why = bars_match_meter(abc)
        error = "; ".join(e for e in (parsed.error, why) if e)
        out.append(PieceCheck(config.seed, piece.patches, piece.stop_reason, parsed.music21, parsed.abc2xml,
                              bars_ok, error))
    return out


_INLINE_FIELD = re.compile(r"\[([ML]):([^\]]*)\]")


def _fraction(text: str) -> Fraction | None:
    text = text.strip()
    if text == "C":
        return Fraction(4, 4)
    if text == "C|":
        return Fraction(2, 2)
    m = re.fullmatch(r"(\d+(?:\+\d+)*)/(\d+)", text)
    return Fraction(sum(int(x) for x in m.group(1).split("+")), int(m.group(2))) if m else None


def bars_match_meter(abc: str) -> tuple[bool, str]:
    """Does every bar of every voice (except each voice's first and last: pickups and endings)
    last one bar of the meter, in units of L, by abctoolkit's ``calculate_bartext_duration``?
    Inline ``[M:]`` / ``[L:]`` changes are followed; a piece with no meter (``M:none``) passes."""
    from abctoolkit.duration import calculate_bartext_duration
    from abctoolkit.utils import extract_barline_and_bartext_dict_rotated

    lines = abc.splitlines(keepends=True)
    fields = {line[0]: line[2:].strip() for line in lines if re.match(r"^[ML]:", line)}
    meter, unit = _fraction(fields.get("M", "")), _fraction(fields.get("L", "1/8")) or Fraction(1, 8)
    if fields.get("M", "").lower() == "none":
        return True, ""
    if meter is None:
        return False, f"bars: unreadable meter {fields.get('M')!r}"
    body = [line for line in lines if line.startswith("[V:")]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _, _, _, bars, _ = extract_barline_and_bartext_dict_rotated([ln for ln in lines if not ln.startswith("[V:")] + body)
    except Exception as exc:  # malformed voice layout
        return False, f"bars: cannot split voices ({type(exc).__name__})"
    for voice, texts in bars.items():
        m, u = meter, unit
        for i, text in enumerate(texts):
            for field, value in _INLINE_FIELD.findall(text):
                if field == "M" and _fraction(value):
                    m = _fraction(value)
                elif field == "L" and _fraction(value):
                    u = _fraction(value)
            if i in (0, len(texts) - 1):
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    duration = calculate_bartext_duration(NOT_NOTES.sub("", text))
            except Exception:
                duration = None
            if duration != m / u:
                return False, f"bars: voice {voice} bar {i + 1} lasts {duration} units of L, the meter asks {m / u}"
    return True, ""


def unigram_bits_per_char(train: list[str], heldout: list[str], patch_length: int) -> float:
    """The teacher-forced positions of ``heldout`` scored by a character unigram (add-one
    smoothed) fitted on ``train``: the baseline beside a model's bits per character."""

    def targets(pieces: list[str]) -> np.ndarray:
        ids = np.concatenate([w[1:].ravel() for text in pieces for w in encode_windows(text, patch_length)])
        return ids[ids != PAD_ID]

    counts = np.bincount(targets(train), minlength=VOCAB_SIZE) + 1
    return float(-np.mean(np.log2(counts / counts.sum())[targets(heldout)]))


_GREEDY = SamplingParams(top_k=1, top_p=1.0, temperature=1.0)  # the draw is the argmax, whatever the uniform


def cpu_form_agreement(model: OrtBackend, reference: OrtBackend, pieces: list[str],
                       progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """(top-1 agreement, scored characters) of ``model``'s engine-ready graphs with
    ``reference``'s on the CPU (module doc), over the positions ``teacher_forced`` scores.
    ``progress(done, total)`` after each piece: a piece takes seconds."""
    executors = [b.executor(PATCH_SIZE) for b in (model, reference)]  # row c draws position c
    agree = chars = 0
    for done, text in enumerate(pieces, 1):
        for w in encode_windows(text, model.config.patch_length):
            if len(w) < 2:
                continue
            drawn = [_greedy_positions(executor, w) for executor in executors]
            mask = w[1:] != PAD_ID
            agree += int((drawn[0] == drawn[1])[mask].sum())
            chars += int(mask.sum())
        if progress is not None:
            progress(done, len(pieces))
    for executor in executors:
        executor.close()
    return (agree / chars if chars else 1.0), chars


def _greedy_positions(executor: Executor, window: np.ndarray) -> np.ndarray:
    """[n - 1, 16]: each position of patches 1..n-1 drawn greedily after its true prefix. Per
    patch, one call draws the 16 positions (row c forced the first c true characters, nothing
    accepted), a second writes the true patch into every row, which the rows then accept."""
    rows = range(PATCH_SIZE)
    uniforms = np.full(PATCH_SIZE, 0.5)
    for r in rows:
        executor.load(r, window[:1])
    out = np.zeros((len(window) - 1, PATCH_SIZE), np.int64)
    for t in range(1, len(window)):
        got = executor.sample({c: PatchRequest(window[t][:c].tolist(), uniforms, _GREEDY) for c in rows})
        out[t - 1] = [got[c][c] for c in rows]
        executor.sample({c: PatchRequest(window[t].tolist(), uniforms, _GREEDY) for c in rows})
        executor.accept(list(rows))
    return out


FP16_FORM_PIECES = 8  # pieces an fp16 variant's CPU form is scored on (module doc)


def spread(pieces: list[str], n: int) -> list[str]:
    """At most ``n`` of ``pieces``, evenly spaced over them."""
    return pieces[:: max(1, len(pieces) // n)][:n]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def evaluate(model_dir: str | Path, pieces: list[str], num_generated: int = 8, device: Device = "cpu",
             threads: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The whole report of ``notagen-trt eval`` for an ONNX model directory (``progress``: see
    ``cpu_form_agreement``, its slow part)."""
    model_dir = Path(model_dir)
    ref = reference_dir(model_dir)
    backend = OrtBackend(model_dir, device, threads)  # loaded once, for every part of the report
    reference = OrtBackend(ref, device, threads) if ref is not None else None
    tf = teacher_forced(backend, pieces, reference, device, threads)
    result: dict[str, Any] = {
        "model": str(model_dir), "precision": backend.manifest.get("precision", "fp32"),
        "reference": str(ref) if ref else None, "pieces": len(pieces), "chars": tf.chars,
        "bits_per_char": round(tf.bits_per_char, 5), "top1_agreement": _round(tf.top1_agreement, 5),
        "max_abs_logit_diff": _round(tf.max_abs_logit_diff, 5), "mean_abs_logit_diff": _round(tf.mean_abs_logit_diff, 6),
    }
    if tf.reference_bits_per_char is not None:
        result["reference_bits_per_char"] = round(tf.reference_bits_per_char, 5)
        result["bits_per_char_change"] = round(tf.bits_per_char / tf.reference_bits_per_char - 1, 5)
    if (reference is not None and device == "cpu" and reference.manifest.get("layout") == "engine"
            and any(g.get("cpu_file") for g in backend.manifest["graphs"].values())):
        scored = spread(pieces, FP16_FORM_PIECES) if result["precision"] == "fp16" else pieces
        result["cpu_form_top1_agreement"] = round(cpu_form_agreement(backend, reference, scored, progress)[0], 5)
        result["cpu_form_pieces"] = len(scored)
    if num_generated > 0:
        checks = generated_validity(backend, num_generated)
        result["valid_fraction"] = sum(c.valid for c in checks) / len(checks)
        result["generated"] = [{**asdict(c), "valid": c.valid} for c in checks]
    else:
        result["valid_fraction"] = None
    result["gate"] = gate(result)
    return result
