"""What each precision variant of ``quantize.py`` must achieve, in one place (numpy-free, torch-free:
the runtime's ``eval`` and the ``verify`` command both read it).

- ``GATES``: the accuracy gates ``notagen-trt eval`` applies on held-out ABC: the largest relative
  bits/char increase over the fp32 source and the smallest top-1 agreement with it.
- ``VERIFY_TOLERANCES``: the default (atol, rtol) of ``notagen-trt verify``: an output element
  fails where |diff| > atol and |diff| / |reference| > rtol. Set from the demo model's largest
  |diff| against PyTorch fp32 on 32 held-out pieces (step graphs fed the reference's own caches):
  fp32 1.2e-5, fp16 6.3e-3, int8-wo 0.23, int8 1.2 (char logits; hidden states and KV caches
  differ less), with 2-3x headroom; an int8-wo variant with one char layer's projection weights
  scaled by 1.5 differs by 3.2 and fails even the int8 default.
"""

from __future__ import annotations

from typing import Any

# precision: (largest relative bits/char increase over fp32, smallest top-1 agreement)
GATES: dict[str, tuple[float, float]] = {"fp16": (0.005, 0.995), "int8-wo": (0.01, 0.99), "int8": (0.03, 0.97)}

# precision: (atol, rtol) for `notagen-trt verify` against an fp32 reference
VERIFY_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (2e-2, 1e-2),
    "int8-wo": (0.5, 0.05),
    "int8": (2.5, 0.1),
}


def gate(result: dict[str, Any]) -> dict[str, Any] | None:
    """Pass / fail of an ``eval`` result (its precision, bits/char change and top-1 agreement, and
    its CPU form's top-1 agreement where it has one) against its precision's gate (None for fp32,
    which is its own reference)."""
    limits = GATES.get(result.get("precision"))
    if limits is None:
        return None
    max_change, min_top1 = limits
    passed = result["bits_per_char_change"] <= max_change and result["top1_agreement"] >= min_top1
    # A variant's CPU form of the engine-ready graphs (other weights: runtime/evaluate.py) too.
    passed = passed and result.get("cpu_form_top1_agreement", 1.0) >= min_top1
    return {"max_bits_per_char_change": max_change, "min_top1_agreement": min_top1, "passed": passed}


def verify_tolerance(*precisions: str | None) -> tuple[float, float]:
    """Default (atol, rtol) for comparing models of these precisions: the loosest of them (None
    and unknown labels count as fp32, e.g. the PyTorch reference)."""
    pairs = [VERIFY_TOLERANCES.get(p or "fp32", VERIFY_TOLERANCES["fp32"]) for p in precisions] or \
        [VERIFY_TOLERANCES["fp32"]]
    return max(a for a, _ in pairs), max(r for _, r in pairs)
