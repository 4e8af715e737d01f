"""`notagen-trt eval` prints text a person reads, not Python reprs (--json has every field)."""

from notagen_trt.commands.evaluate import report

RESULT = {
    "model": "variants/int8", "precision": "int8", "reference": "model/fp32", "pieces": 32, "chars": 31012,
    "bits_per_char": 0.96771, "top1_agreement": 0.98243, "max_abs_logit_diff": 2.8812, "mean_abs_logit_diff": 0.12512,
    "reference_bits_per_char": 0.96423, "bits_per_char_change": 0.00361, "valid_fraction": 0.5,
    "generated": [{"seed": 0, "patches": 90, "stop_reason": "eos", "music21": True, "abc2xml": True,
                   "bars_match_meter": True, "error": "", "valid": True},
                  {"seed": 1, "patches": 70, "stop_reason": "eos", "music21": True, "abc2xml": True,
                   "bars_match_meter": False, "error": "bars: voice V:1 bar 9 lasts 7/2 units of L", "valid": False}],
    "gate": {"max_bits_per_char_change": 0.03, "min_top1_agreement": 0.97, "passed": True},
    "unigram_bits_per_char": 5.177,
}


def test_eval_report_is_readable_text():
    text = report(RESULT)
    assert "{" not in text and "None" not in text and "True" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["model", "variants/int8", "(int8)"]
    assert "bits/char        0.9677 (unigram baseline 5.1770)" in text
    assert "vs fp32          +0.36% (fp32 0.9642, model/fp32)" in text
    assert "top-1 agreement  98.24%" in text
    assert "valid pieces     1/2 generated" in text and "seed 1" in text and "lasts 7/2" in text
    assert "gate             pass (bits/char within 3% of fp32, top-1 at least 97%)" in text


def test_eval_report_of_an_fp32_model_or_checkpoint_leaves_out_what_it_lacks():
    text = report({"model": "demo.pth", "precision": "pytorch fp32", "bits_per_char": 0.9642})
    assert text.splitlines() == ["model      demo.pth (pytorch fp32)", "bits/char  0.9642"]
