import json

import pytest

from notagen_trt.cli import main


def test_bench_reports_published_reference_and_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--size", "demo", "--context", "8", "--patches", "3", "--published-patches", "2",
               "--warmup", "1", "--backends", "ort-cpu,torch-cached,fast", "--batch", "1,2", "--json", str(out),
               "--json-only"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["reference"]["published_ms_per_patch_median"] > 0
    assert report["cpu"]["model"] and "flags" in report["cpu"]
    rows = {(r["backend"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {("torch-published", 1), ("ort-cpu", 1), ("ort-cpu", 2), ("torch-cached", 1),
                         ("fast", 1), ("fast", 2)}
    for r in rows.values():
        assert {"backend", "precision", "batch", "ms_per_patch_median", "pieces_per_minute", "peak_gpu_mb",
                "peak_rss_mb", "device"} <= set(r)
        assert r["ms_per_patch_median"] > 0 and r["peak_rss_mb"] > 0
    assert rows[("ort-cpu", 1)]["peak_rss_mb"] < rows[("torch-published", 1)]["peak_rss_mb"]  # no torch loaded
    assert "ms per patch" in capsys.readouterr().err


def test_bench_refuses_an_unknown_precision(capsys):
    # before anything is built or timed: a typo must not be timed as fp32 under its own label
    assert main(["bench", "--size", "demo", "--precisions", "fp16,int4"]) != 0
    assert "unknown precisions ['int4']" in capsys.readouterr().err


def test_bench_records_the_cpu_it_ran_on():
    from notagen_trt.bench import CPU_FLAGS, cpu_info

    info = cpu_info()
    assert info["model"] and info["cores"] >= 1
    assert 1 <= info["usable_cores"] <= info["cores"]
    assert set(info["flags"]) <= set(CPU_FLAGS)
    assert info["allocator"] in ("jemalloc", "tcmalloc", "mimalloc", "system")  # pytest itself: not restarted


def test_bench_rounds_interleave_rows_and_report_medians_of_ratios(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "demo", "--context", "8", "--patches", "3", "--published-patches", "2",
                 "--warmup", "1", "--backends", "ort-cpu", "--batch", "1,2", "--inflight", "2",
                 "--inflight-patches", "3,4", "--rounds", "3", "--json", str(out), "--json-only"]) == 0
    report = json.loads(out.read_text())
    assert report["rounds"] == 3
    published, *rows = report["results"]
    assert len(published["ms_per_patch_per_round"]) == 3
    assert published["ms_per_patch_median"] == sorted(published["ms_per_patch_per_round"])[1]
    for r in rows:
        assert len(r["ms_per_patch_per_round"]) == len(r["speedup_per_round"]) == 3
        # each round's ratio is published / row in that round; the row's ratio is their median
        for ref, ms, ratio in zip(published["ms_per_patch_per_round"], r["ms_per_patch_per_round"], r["speedup_per_round"]):
            assert abs(ratio - ref / ms) <= 0.01 * ratio
        assert r["speedup_vs_published"] == sorted(r["speedup_per_round"])[1]
    inflight = [r for r in rows if r.get("inflight_pieces") and r["batch"] == 2]
    assert inflight and len(inflight[0]["inflight_vs_one_row_per_round"]) == 3


def test_bench_refuses_what_cannot_run_here_before_the_published_row(tmp_path, capsys):
    """A CUDA row on a machine whose ONNX Runtime has no CUDA provider, and a --json / --plot file
    that cannot be written, are refused in one line before anything is timed (the published row
    alone takes minutes on the bigger shapes)."""
    import onnxruntime as ort

    cases = [(["--json", str(tmp_path / "missing" / "b.json")], "does not exist"),
             (["--plot", str(tmp_path)], "is a folder")]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cases.append((["--backends", "ort-cuda"], "no CUDA provider"))
    for extra, words in cases:
        rc = main(["bench", "--size", "demo", "--context", "8", "--patches", "2", *extra])
        captured = capsys.readouterr()
        assert rc != 0 and captured.out == ""  # no row ran
        assert words in captured.err and len(captured.err.strip().splitlines()) == 1


def test_an_existing_writable_file_is_a_fine_json_target(tmp_path):
    """The up-front check tests an existing file itself (its folder may be read-only, as /dev is)."""
    from notagen_trt.files import check_out_file

    assert str(check_out_file("/dev/null", "--json")) == "/dev/null"


def test_bench_counts_below_their_minimum_are_refused_while_parsing(capsys):
    """--patches 0 (and the other counts) is a usage error at once, not a failure after the export
    and the published row."""
    for flag, value in (("--patches", "0"), ("--published-patches", "0"), ("--rounds", "0"), ("--warmup", "-1"),
                        ("--context", "0"), ("--inflight", "x")):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "--size", "demo", flag, value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}" in err and ("must be >=" in err or "whole number" in err)
