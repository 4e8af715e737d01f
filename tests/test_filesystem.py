"""Faults a real machine throws at the stages that write: an --out that is a file, a read-only
folder or source, a full disk, a folder holding another stage's output, a damaged or unwritable
demo cache, leftovers of killed runs. Each ends in one line on stderr and exit status 2 (no
traceback), writes nothing half, and replaces nothing of the user's."""

import json
import os
import shutil
import subprocess

import onnx

import pytest
from test_reliability import assert_one_line_error, run_cli

from notagen_trt.errors import NotaGenError
from notagen_trt.files import Claim, claim_out_dir, clean_stale_staging, prepare_engine_out, prepare_out_dir

ROOT = os.geteuid() == 0


def _snapshot(folder):
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mount_tmpfs(path, options):
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    return result.returncode == 0, result.stderr.strip()


@pytest.fixture
def fs_faults(tmp_path, monkeypatch):
    """readonly(folder, like=None) and full(folder, like=None): ``folder`` made read-only or full
    (holding a copy of ``like``). Root ignores permission bits, so as root these are tmpfs mounts
    (read-only; sized to what they hold); otherwise chmod, and a full disk is simulated by
    making every atomic write's fsync fail with ENOSPC."""
    mounted = []

    def fill(path, like):
        path.mkdir(parents=True, exist_ok=True)
        if like is not None:
            shutil.copytree(like, path, dirs_exist_ok=True)

    def mount_copy(path, like, options):
        saved = tmp_path / f".saved-{len(mounted)}"
        fill(saved, like)
        path.mkdir(parents=True, exist_ok=True)
        ok, why = _mount_tmpfs(path, options)
        if not ok:
            pytest.skip(f"running as root, and a tmpfs cannot be mounted here ({why}): no way to make a folder "
                        "read-only or full for root")
        mounted.append(path)
        shutil.copytree(saved, path, dirs_exist_ok=True)
        return path

    def readonly(path, like=None):
        if not ROOT:
            fill(path, like)
            for p in [path, *path.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
            return path
        mount_copy(path, like, "size=8m")
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    def full(path, like=None):
        if not ROOT:
            import errno

            fill(path, like)

            def no_space(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "fsync", no_space)
            return path
        mount_copy(path, like, "size=4m")
        fd = os.open(path / ".filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):  # take every free block
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        return path

    class Faults:
        pass

    faults = Faults()
    faults.readonly, faults.full = readonly, full
    yield faults
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _tiny(tiny_dir):
    return str(tiny_dir / "onnx")


# ---------------------------------------------------------------- --out that cannot be written

@pytest.mark.parametrize("stage", ["generate", "export", "quantize", "reference"])
def test_out_naming_a_file_is_refused_before_the_work(capsys, tiny_dir, tmp_path, stage):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    rc, err = run_cli(capsys, *_argv(stage, tiny_dir, target))
    assert_one_line_error(rc, err, str(target), "is a file")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("stage", ["generate", "export", "quantize", "reference"])
def test_read_only_out_is_refused_before_the_work(capsys, tiny_dir, tmp_path, fs_faults, stage):
    ro = fs_faults.readonly(tmp_path / "ro")
    rc, err = run_cli(capsys, *_argv(stage, tiny_dir, ro / "out"))
    assert_one_line_error(rc, err, str(ro / "out"), "cannot write")


def _argv(stage, tiny_dir, out):
    if stage == "generate":
        return ["generate", "--model", _tiny(tiny_dir), "--max-patches", "2", "--formats", "abc", "--json", "--out", str(out)]
    if stage == "export":
        return ["export", "--checkpoint", str(tiny_dir / "tiny.pth"), "--no-parity", "--out", str(out)]
    if stage == "reference":
        return ["reference", "--checkpoint", str(tiny_dir / "tiny.pth"), "--max-patches", "2", "--no-check",
                "--out", str(out)]
    return ["quantize", "--model", _tiny(tiny_dir), "--precision", "int8-wo", "--json", "--out", str(out)]


def test_full_disk_while_generating_is_one_line_and_leaves_no_half_piece(capsys, tiny_dir, tmp_path, fs_faults):
    out = fs_faults.full(tmp_path / "full")
    before = _snapshot(out)
    rc, err = run_cli(capsys, "generate", "--model", _tiny(tiny_dir), "--max-patches", "2", "--out", str(out), "--json")
    assert_one_line_error(rc, err, "piece_seed0.abc", "could not write", "free some disk space")
    assert _snapshot(out) == before  # no piece, no temporary file


@pytest.mark.parametrize("stage", ["export", "quantize"])
def test_full_disk_keeps_the_previous_model(capsys, tiny_dir, tmp_path, fs_faults, stage):
    previous = tiny_dir / "onnx"
    if stage == "quantize":
        previous = tmp_path / "variant"
        assert run_cli(capsys, *_argv(stage, tiny_dir, previous))[0] == 0
    out = fs_faults.full(tmp_path / "model", like=previous)
    before = _snapshot(out)
    rc, err = run_cli(capsys, *_argv(stage, tiny_dir, out))
    assert_one_line_error(rc, err, str(out), "free some disk space")
    assert _snapshot(out) == before


def test_unwritable_demo_cache_is_one_line(capsys, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    rc, err = run_cli(capsys, "generate", "--backend", "ort-cpu", "--out", str(tmp_path / "g"))
    assert_one_line_error(rc, err, str(not_a_folder), "XDG_CACHE_HOME")


def test_read_only_demo_cache_is_one_line(capsys, tmp_path, monkeypatch, fs_faults):
    monkeypatch.setenv("XDG_CACHE_HOME", str(fs_faults.readonly(tmp_path / "cache")))
    rc, err = run_cli(capsys, "quantize", "--precision", "int8-wo", "--out", str(tmp_path / "q"))
    assert_one_line_error(rc, err, str(tmp_path / "cache"), "cannot write", "XDG_CACHE_HOME")


# ---------------------------------------------------------------- results nobody overwrites

def _fake_output(folder, kind, precision, files):
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"old " + name.encode())
    graphs = {g: {"file": f"{g}.plan" if kind == "engine" else f"{g}.onnx"} for g in ("patch_decoder", "char_decoder")}
    (folder / "manifest.json").write_text(json.dumps({"kind": kind, "precision": precision, "graphs": graphs}))
    return folder


def test_export_over_an_engine_directory_is_refused_unless_forced(capsys, tiny_dir, tmp_path):
    engine = _fake_output(tmp_path / "engine", "engine", "fp32", ["patch_decoder.plan", "char_decoder.plan"])
    before = _snapshot(engine)
    argv = ["export", "--checkpoint", str(tiny_dir / "tiny.pth"), "--no-parity", "--out", str(engine)]
    assert_one_line_error(*run_cli(capsys, *argv), str(engine), "engine directory", "--force")
    assert _snapshot(engine) == before
    assert run_cli(capsys, *argv, "--force")[0] == 0
    assert sorted(p.name for p in engine.iterdir()) == ["char_decoder.onnx", "context_loader.onnx", "manifest.json",
                                                        "patch_decoder.onnx", "patch_engine.cpu.onnx", "patch_engine.onnx"]


def test_quantize_over_another_precision_or_foreign_files_is_refused(capsys, tiny_dir, tmp_path):
    fp32 = tmp_path / "fp32"
    shutil.copytree(tiny_dir / "onnx", fp32)
    variant = tmp_path / "variant"
    argv = ["quantize", "--model", str(fp32), "--precision", "int8-wo", "--out"]
    assert_one_line_error(*run_cli(capsys, *argv, str(tiny_dir / "onnx")), "fp32 onnx directory", "--force")
    assert run_cli(capsys, *argv, str(variant))[0] == 0
    assert run_cli(capsys, *argv, str(variant))[0] == 0  # the same stage's earlier output is replaced
    (variant / "my-notes.txt").write_text("mine")
    assert_one_line_error(*run_cli(capsys, *argv, str(variant)), "did not write (my-notes.txt)")
    assert (variant / "my-notes.txt").read_text() == "mine"


def test_quantize_exclude_names_must_be_nodes_of_the_graphs(capsys, tiny_dir, tmp_path):
    """A misspelt --exclude name is refused before any work (it was quantized without a word), with
    the near names; --exclude outside int8 is refused too."""
    graph = onnx.load(str(tiny_dir / "onnx" / "char_decoder.onnx"), load_external_data=False).graph
    real = next(n.name for n in graph.node if n.op_type == "MatMul")
    argv = ["quantize", "--model", _tiny(tiny_dir), "--precision", "int8", "--out", str(tmp_path / "q"), "--exclude"]
    assert_one_line_error(*run_cli(capsys, *argv, real + "x"), repr(real + "x"), real)
    assert not (tmp_path / "q").exists()
    assert_one_line_error(*run_cli(capsys, *argv[:4], "int8-wo", *argv[5:], real), "applies to int8")


def test_a_rerun_replaces_its_own_stale_files(tiny_dir, tmp_path):
    """An export with external data, then one without: the old side files go."""
    import torch

    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.onnx_export import export_onnx

    model = load_model(tiny_dir / "tiny.pth")
    with torch.no_grad():
        export_onnx(model, tmp_path, parity=False, external_data=True)
        assert (tmp_path / "patch_decoder.onnx.data").is_file()
        export_onnx(model, tmp_path, parity=False, external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char_decoder.onnx", "manifest.json", "patch_decoder.onnx"]


@pytest.mark.parametrize("make_out, needle", [
    (lambda tiny_dir, tmp_path: tiny_dir / "onnx", "fp32 onnx directory"),  # the model's own folder
    (lambda tiny_dir, tmp_path: _fake_output(tmp_path / "e", "engine", "int8", ["patch_decoder.plan"]), "int8 engine"),
    (lambda tiny_dir, tmp_path: (tmp_path / "f").write_text("") or tmp_path / "f", "is a file"),
])
def test_build_refuses_a_bad_out_before_any_work(capsys, tiny_dir, tmp_path, make_out, needle):
    out = make_out(tiny_dir, tmp_path)
    rc, err = run_cli(capsys, "build", "--model", _tiny(tiny_dir), "--flavor", "rtx", "--out", str(out))
    assert_one_line_error(rc, err, str(out), needle)
    assert isinstance(prepare_engine_out(tmp_path / "new", tiny_dir / "onnx"), Claim)


def test_force_never_empties_home_or_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotaGenError, match="refusing to replace everything"):
        claim_out_dir(tmp_path, "export", "onnx", "fp32", force=True)
    with pytest.raises(NotaGenError) as refused:  # nor is --force offered there
        claim_out_dir(tmp_path, "export", "onnx", "fp32")
    assert "--force" not in str(refused.value) and "a new folder" in str(refused.value)


def test_generate_refuses_a_model_directory_as_out(capsys, tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir / "onnx", model)
    before = _snapshot(model)
    assert_one_line_error(*run_cli(capsys, "generate", "--model", str(model), "--out", str(model)),
                          str(model), "model or engine directory")
    assert _snapshot(model) == before


# ---------------------------------------------------------------- scratch files

def test_quantize_writes_nothing_into_a_read_only_source(capsys, tiny_dir, tmp_path, fs_faults):
    source = fs_faults.readonly(tmp_path / "source", like=tiny_dir / "onnx")
    before = _snapshot(source)
    out = tmp_path / "variant"
    rc, err = run_cli(capsys, "quantize", "--model", str(source), "--precision", "int8-wo", "--out", str(out))
    assert rc == 0, err
    assert _snapshot(source) == before
    assert sorted(p.name for p in out.iterdir()) == ["char_decoder.onnx", "manifest.json", "patch_decoder.onnx"]


def test_killed_runs_leftovers_are_cleaned_by_the_next_run(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is gone
    alive = os.getppid()
    names = {f".quantize-{dead.pid}-abc123": True, f".export-{alive}-abc123": False,
             f".patch_decoder.onnx-{dead.pid}-x1y2z3.tmp": True, ".export-legacy01": True, ".export-fresh01": False}
    for name in names:
        (tmp_path / name).mkdir() if not name.endswith(".tmp") else (tmp_path / name).write_text("")
    old = os.stat(tmp_path).st_mtime - 7200
    os.utime(tmp_path / ".export-legacy01", (old, old))  # no pid in the name: stale after an hour
    assert sorted(clean_stale_staging(tmp_path)) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)
    assert prepare_out_dir(tmp_path, "export") == tmp_path


# ---------------------------------------------------------------- damaged models and caches

def test_swapped_truncated_or_edited_model_files_are_one_line(capsys, tiny_dir, tmp_path):
    model = tmp_path / "model"
    argv = ["generate", "--model", str(model), "--max-patches", "2", "--formats", "abc", "--json", "--out", str(tmp_path / "g")]

    def fresh():
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(tiny_dir / "onnx", model)

    fresh()
    shutil.copy(model / "char_decoder.onnx", model / "patch_decoder.onnx")  # swapped
    assert_one_line_error(*run_cli(capsys, *argv), "patch_decoder.onnx", "re-export")
    fresh()
    (model / "char_decoder.onnx").write_bytes((model / "char_decoder.onnx").read_bytes()[:-10])
    assert_one_line_error(*run_cli(capsys, *argv), "char_decoder.onnx", "truncated")
    fresh()
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["model"]["hidden_size"] = 128
    (model / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(*run_cli(capsys, *argv), "manifest.json", "edited")


def test_a_damaged_checkpoint_cache_is_rebuilt(capsys, tiny_dir, tmp_path, monkeypatch):
    from notagen_trt.demo import exported_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = exported_dir(tiny_dir / "tiny.pth")
    (cache / "patch_decoder.onnx").write_bytes(b"junk")
    capsys.readouterr()
    assert exported_dir(tiny_dir / "tiny.pth") == cache
    err = capsys.readouterr().err
    assert "patch_decoder.onnx" in err and "rebuilding it" in err and len(err.strip().splitlines()) == 1
    from notagen_trt.manifest import read_manifest

    read_manifest(cache)  # whole again


def test_the_export_cache_keeps_the_most_recently_used_exports(capsys, tiny_dir, tmp_path, monkeypatch):
    """An upgrade exports a checkpoint again under a new key; the older exports of the same weights
    beyond KEEP_EXPORTS go, least recently used first. Another checkpoint of the same file name
    (other weights) and anything that is not an export are left alone."""
    import hashlib
    import os

    from notagen_trt.demo import KEEP_EXPORTS, exported_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "notagen-trt"
    mine = hashlib.sha256((tiny_dir / "tiny.pth").read_bytes()).hexdigest()

    def fake_export(folder, sha, age):
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"source": {"sha256": sha}}))
        os.utime(folder, (1e9 - age * 1000, 1e9 - age * 1000))
        return folder

    old = [fake_export(root / f"tiny-{i:012x}", mine, i) for i in range(KEEP_EXPORTS + 1)]  # old[0] used last
    strangers = [fake_export(root / "tiny-00000000ffff", "other weights", 99),  # another tiny.pth
                 fake_export(root / "tiny-notanexport", mine, 99), fake_export(root / "tiny-big-0123456789ab", mine, 99),
                 fake_export(root / "other-0123456789ab", mine, 99)]
    capsys.readouterr()
    cache = exported_dir(tiny_dir / "tiny.pth")
    err = capsys.readouterr().err
    kept = sorted(p for p in root.iterdir() if p not in strangers)
    assert kept == sorted([cache, *old[: KEEP_EXPORTS - 1]])
    assert all(p.is_dir() for p in strangers)
    assert err.count("removed ") == 2 and str(old[-1]) in err
    assert exported_dir(tiny_dir / "tiny.pth") == cache and "removed" not in capsys.readouterr().err


def test_a_library_failing_on_a_full_disk_says_so(tmp_path, monkeypatch):
    """ONNX Runtime's quantizer reads back a truncated file and complains about an ONNX domain:
    when the disk is full after a failure, the error says that instead."""
    import collections

    from notagen_trt import files

    with pytest.raises(ValueError, match="unrelated"):  # room left: the library's own error stands
        with files.out_of_space_is_one_line(tmp_path):
            raise ValueError("unrelated")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(100, 100, 0))
    with pytest.raises(NotaGenError, match=r"the disk ran out of space while writing \(ValueError: Failed to find "
                                           r"proper ai.onnx domain\); free some disk space"):
        with files.out_of_space_is_one_line(tmp_path):
            raise ValueError("Failed to find proper ai.onnx domain")


def test_build_force_replaces_another_stage_output_whole(capsys, tiny_dir, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "notes.txt").write_text("not an engine")
    rc, err = run_cli(capsys, "build", "--model", _tiny(tiny_dir), "--flavor", "rtx", "--out", str(out))
    assert rc == 2 and "--force" in err and (out / "notes.txt").is_file()  # refused, nothing touched
    rc, _ = run_cli(capsys, "build", "--model", _tiny(tiny_dir), "--flavor", "rtx", "--out", str(out), "--force")
    assert rc == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "char_decoder.plan", "manifest.json", "patch_decoder.plan"]


def test_train_checks_its_output_before_training(capsys, tmp_path):
    rc, err = run_cli(capsys, "train", "--out", str(tmp_path), "--steps", "1")
    assert_one_line_error(rc, err, str(tmp_path), "is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, err = run_cli(capsys, "train", "--out", str(blocker / "m.pth"), "--steps", "1")
    assert_one_line_error(rc, err, "is a file")
