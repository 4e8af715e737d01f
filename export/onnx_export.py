"""Export both NotaGen decoders to ONNX step graphs with KV-cache inputs, check them against PyTorch.

One graph per decoder serves prefill and incremental steps (Hugging Face Optimum style): the KV
cache enters as ``past_key_values.{i}.key/value`` [batch, heads, past, 64] (empty for prefill)
and leaves, grown by concatenation, as ``present.{i}.key/value``. Positions start at the past
length, so no position input is needed. The char graph replaces the embedding at absolute
position 0 with ``patch_hidden`` through a ``Where``, so the first call and later steps share it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

import notagen_trt
from notagen_trt.config import HEAD_DIM, VOCAB_SIZE, ModelConfig
from notagen_trt.errors import NotaGenError
from notagen_trt.files import (GRAPH_FILE_KEYS, claim_out_dir, out_of_space_is_one_line, prepare_out_dir,
                               require_free_space, sha256_file, stage, staging_prefix, writing)
from notagen_trt.manifest import ENGINE_GRAPHS, FORMAT_VERSION, MANIFEST_NAME, file_checksums, with_checksum

from . import engine_graphs
from .trace_ops import Reshape as _Reshape
from .trace_ops import gelu_tanh as _gelu_tanh
from .trace_ops import linear as _linear
from .model import KV, CharLevelDecoder, NotaGenModel, PatchLevelDecoder

PARITY_TOLERANCE = 1e-4
PARITY_STEPS = 32  # incremental steps checked at each level
EXTERNAL_DATA_BYTES = 1_500_000_000  # above this, weights go to a side file (protobuf caps at 2 GB)
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.DOUBLE: "float64",
                onnx.TensorProto.BOOL: "bool"}


def _flat(past: tuple[torch.Tensor, ...]) -> list[KV]:
    return [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]


def _gpt2_step(gpt2: nn.Module, embeds: torch.Tensor, positions: torch.Tensor,
               past: list[KV]) -> tuple[torch.Tensor, list[KV]]:
    """model.GPT2.forward with a past, in trace-friendly ops (same math; the parity check proves
    it): constant-shape reshapes, and the causal mask built once instead of once per layer."""
    x = embeds + gpt2.wpe(positions)
    # Query i (absolute position positions[i]) sees keys 0 .. positions[i].
    keys = torch.arange(positions[-1] + 1, device=embeds.device)
    masked = keys[None, :] > positions[:, None]
    presents = []
    for block, (past_k, past_v) in zip(gpt2.h, past):
        attn = block.attn
        heads = attn.heads
        h = heads * HEAD_DIM  # plain ints: traced sizes cannot go into a _Reshape constant
        q, k, v = _linear(block.ln_1(x), attn.c_attn).split(h, dim=2)
        q, k, v = (_Reshape.apply(z, [0, -1, heads, HEAD_DIM]).transpose(1, 2) for z in (q, k, v))
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
        scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
        y = _Reshape.apply((F.softmax(scores, dim=-1) @ v).transpose(1, 2), [0, -1, h])
        x = x + _linear(y, attn.c_proj)
        x = x + _linear(_gelu_tanh(_linear(block.ln_2(x), block.mlp.c_fc)), block.mlp.c_proj)
        presents.append((k, v))
    return gpt2.ln_f(x), presents


def _positions(past: tuple[torch.Tensor, ...], new: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    return past[0].shape[2] + torch.arange(new, device=device)


class PatchStep(nn.Module):
    """(patches, *past) -> (last_hidden_state, *present): the PatchLevelDecoder traced through _gpt2_step."""

    def __init__(self, decoder: PatchLevelDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, patches: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        positions = _positions(past, patches.shape[1], patches.device)
        hidden, presents = _gpt2_step(self.decoder.base, self.decoder.embed(patches), positions, _flat(past))
        return (hidden, *[t for kv in presents for t in kv])


class CharStep(nn.Module):
    """(input_ids, patch_hidden, *past) -> (logits, *present): the CharLevelDecoder traced through _gpt2_step."""

    def __init__(self, decoder: CharLevelDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor, patch_hidden: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lm = self.decoder.base
        embeds = lm.transformer.wte(input_ids)
        # Absolute position 0 takes the patch hidden state; once past_chars > 0 no position is 0,
        # so the same graph ignores patch_hidden on later steps.
        positions = _positions(past, input_ids.shape[1], input_ids.device)
        embeds = torch.where((positions == 0)[None, :, None], patch_hidden[:, None, :].to(embeds.dtype), embeds)
        x, presents = _gpt2_step(lm.transformer, embeds, positions, _flat(past))
        return (lm.lm_head(x), *[t for kv in presents for t in kv])


def _kv_specs(layers: int, heads: int, past: str, total: str) -> tuple[list[dict], list[dict]]:
    inputs, outputs = [], []
    for i in range(layers):
        for part in ("key", "value"):
            inputs.append(_spec(f"past_key_values.{i}.{part}", "float32", ["batch", heads, past, HEAD_DIM]))
            outputs.append(_spec(f"present.{i}.{part}", "float32", ["batch", heads, total, HEAD_DIM]))
    return inputs, outputs


def _spec(name: str, dtype: str, shape: list[int | str]) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def graph_specs(config: ModelConfig) -> dict[str, dict]:
    """Declared IO of both graphs; string dims are symbolic (``total_* = past_* + new_*``)."""
    h, heads = config.hidden_size, config.num_heads
    p_in, p_out = _kv_specs(config.patch_num_layers, heads, "past_patches", "total_patches")
    c_in, c_out = _kv_specs(config.char_num_layers, heads, "past_chars", "total_chars")
    return {
        "patch_decoder": {
            "num_layers": config.patch_num_layers,
            "inputs": [_spec("patches", "int64", ["batch", "new_patches", config.patch_size]), *p_in],
            "outputs": [_spec("last_hidden_state", "float32", ["batch", "new_patches", h]), *p_out],
            "max_positions": config.patch_length,
        },
        "char_decoder": {
            "num_layers": config.char_num_layers,
            "inputs": [_spec("input_ids", "int64", ["batch", "new_chars"]),
                       _spec("patch_hidden", "float32", ["batch", h]), *c_in],
            "outputs": [_spec("logits", "float32", ["batch", "new_chars", VOCAB_SIZE]), *c_out],
            "max_positions": config.char_positions,
        },
    }


CONTRIB_OPSET = {"com.microsoft": 1}  # ONNX Runtime's fused ops, in the CPU forms only


def _export_graph(module: nn.Module, args: tuple, spec: dict, path: Path, opset: int, contrib: bool = False) -> None:
    """Trace ``module`` to ``path``; ``contrib``: it may emit ONNX Runtime's fused ops (a CPU form)."""
    dynamic = {s["name"]: {i: d for i, d in enumerate(s["shape"]) if isinstance(d, str)}
               for s in spec["inputs"] + spec["outputs"]}
    # The TorchScript exporter keeps our IO names exactly and needs no onnxscript; torch marks it
    # deprecated, and its tracer warns about shape-derived constants (head width, split size)
    # that are fixed by the config. The parity check is what proves the trace generalises.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, str(path), input_names=[s["name"] for s in spec["inputs"]],
                          output_names=[s["name"] for s in spec["outputs"]], dynamic_axes=dynamic,
                          opset_version=opset, do_constant_folding=True, dynamo=False,
                          custom_opsets=CONTRIB_OPSET if contrib else None)


def _declare_io(model: onnx.ModelProto, spec: dict, path: Path) -> None:
    """Stamp the declared dims on the graph's IO (the exporter loses static ones such as the
    hidden size behind reshapes), then require exactly the declared IO: the manifest promises it."""
    for values, specs in ((model.graph.input, spec["inputs"]), (model.graph.output, spec["outputs"])):
        if [v.name for v in values] != [s["name"] for s in specs]:
            raise NotaGenError(f"{path}: exported IO names {[v.name for v in values]} differ from the declared "
                               f"{[s['name'] for s in specs]}; this is an exporter bug")
        for v, s in zip(values, specs):
            dims = v.type.tensor_type.shape.dim
            for d, want in zip(dims, s["shape"]):
                if isinstance(want, str):
                    d.dim_param = want
                else:
                    d.dim_value = want
    if graph_io(model) != {"inputs": spec["inputs"], "outputs": spec["outputs"]}:
        raise NotaGenError(f"{path}: exported IO {graph_io(model)} differs from the declared IO; this is an exporter bug")


def graph_io(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """The graph's inputs and outputs as manifest specs (symbolic dims as their names)."""
    def specs(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
            out.append(_spec(v.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), dims))
        return out
    return {"inputs": specs(model.graph.input), "outputs": specs(model.graph.output)}


def _finalize(path: Path, spec: dict, external: bool) -> str | None:
    """Re-save the exported graph in place with its declared IO, weights in ``<name>.data`` when
    external; return the side file's name."""
    model = onnx.load(str(path))
    _declare_io(model, spec, path)
    # Side files the exporter may write for > 2 GB models are left in the scratch directory.
    location = path.name + ".data" if external else None
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return location


LAYOUTS = ("growing", "engine")


def export_onnx(model: NotaGenModel, out_dir: str | Path, checkpoint_path: str | Path | None = None,
                opset: int = 17, parity: bool = True, external_data: bool | None = None,
                force: bool = False, layout: str = "growing") -> dict[str, Any]:
    """Write ``patch_decoder.onnx``, ``char_decoder.onnx`` and (last) ``manifest.json`` to
    ``out_dir``; return the manifest. With ``parity`` the graphs must match PyTorch within 1e-4
    (ONNX Runtime CPU) before anything is written. ``external_data`` None: only above 1.5 GB.
    ``layout="engine"`` adds the engine-ready graphs (engine_graphs.py) beside the step graphs.
    ``out_dir`` may hold an earlier export (replaced); anything else is refused unless ``force``."""
    if layout not in LAYOUTS:
        raise NotaGenError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if opset < 17:
        raise NotaGenError(f"opset {opset} is too old; use --opset 17 or newer (LayerNormalization needs 17)")
    model = model.float().eval().cpu()
    config = model.config
    out_dir = prepare_out_dir(out_dir, "export")
    claim = claim_out_dir(out_dir, "export", "onnx", "fp32", force)
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    copies = 1.1 if layout == "growing" else 3.2  # the engine-ready graphs and the CPU form hold them again
    require_free_space(out_dir, int(copies * weight_bytes), "export")
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_BYTES
    specs = graph_specs(config)
    if layout == "engine":
        specs.update(engine_graphs.graph_specs(config))
    # Build in a scratch directory beside the output, then move finished files in: a failed or
    # interrupted export never leaves half a model, and the manifest is written last.
    with writing(out_dir), out_of_space_is_one_line(out_dir), \
            tempfile.TemporaryDirectory(prefix=staging_prefix("export"), dir=out_dir) as scratch:
        files = _export_graphs(model, Path(scratch), specs, opset, external_data)
        results = check_parity(model, Path(scratch)) if parity else None
        if parity and layout == "engine":
            results["engine_graphs"] = check_engine_parity(model, Path(scratch))
        manifest = with_checksum({
            "format_version": FORMAT_VERSION,
            "kind": "onnx",
            "model": config.to_dict(),
            "source": _source(checkpoint_path),
            "precision": "fp32",
            "opset": opset,
            "layout": layout,
            "graphs": {name: {**files[name], **specs[name],
                              "kv_layout": _FIXED_KV_LAYOUT if name in ENGINE_GRAPHS else _KV_LAYOUT}
                       for name in specs},
            "tools": _tool_versions(),
            "parity": results,
        })
        written = commit(Path(scratch), out_dir, files, manifest)
    claim.finish(written)
    return manifest


def _export_graphs(model: NotaGenModel, scratch: Path, specs: dict, opset: int, external: bool) -> dict[str, dict]:
    """Trace both step graphs into ``scratch``; {graph: {file, external_data, checksums}}."""
    steps = {"patch_decoder": (PatchStep(model.patch_level_decoder), _patch_example(model.config)),
             "char_decoder": (CharStep(model.char_level_decoder), _char_example(model.config))}
    if "patch_engine" in specs:
        examples = engine_graphs.examples(model.config)
        steps.update({name: (module, examples[name]) for name, module in engine_graphs.modules(model).items()})
    forms = engine_graphs.cpu_modules(model) if "patch_engine" in specs else {}
    files: dict[str, dict] = {}
    for name, (module, example) in steps.items():
        entry = files[name] = {}
        for key, suffix, traced in (("file", ".onnx", module), ("cpu_file", ".cpu.onnx", forms.get(name))):
            if traced is None:
                continue
            path = scratch / f"{name}{suffix}"
            with torch.no_grad():
                _export_graph(traced, example, specs[name], path, opset, contrib=key == "cpu_file")
            data = _finalize(path, specs[name], external)
            entry.update({key: path.name, key.replace("file", "external_data"): data})
        entry["checksums"] = file_checksums(scratch, [entry[k] for k in GRAPH_FILE_KEYS if entry.get(k)])
    return files


def commit(scratch: Path, out_dir: Path, files: dict[str, dict], manifest: dict[str, Any]) -> list[str]:
    """Move a finished model from ``scratch`` into ``out_dir``; return the names written. The
    manifest is staged first (the write that can run out of space), then everything is renamed,
    weights before the graphs that point at them and the manifest last."""
    staged = stage(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    try:
        written = []
        for entry in files.values():
            for key in GRAPH_FILE_KEYS:
                if entry.get(key):
                    os.chmod(scratch / entry[key], 0o644)  # side files come out 0600 otherwise
                    os.replace(scratch / entry[key], out_dir / entry[key])
                    written.append(entry[key])
        os.replace(staged, out_dir / MANIFEST_NAME)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return [*written, MANIFEST_NAME]


_KV_LAYOUT = {
    "kind": "growing",  # present = concat(past, new) along seq; total = past + new
    "axes": ["batch", "heads", "seq", "head_dim"],
    "head_dim": HEAD_DIM,
    "dtype": "float32",
}
_FIXED_KV_LAYOUT = {
    "kind": "fixed",  # present = past with the new positions written (in place where bound to one buffer)
    "axes": ["rows", "heads", "capacity", "head_dim"],
    "head_dim": HEAD_DIM,
    "dtype": "float32",
}


def _source(checkpoint_path: str | Path | None) -> dict[str, str | None]:
    if checkpoint_path is None:
        return {"checkpoint": None, "sha256": None}
    return {"checkpoint": str(Path(checkpoint_path).resolve()), "sha256": sha256_file(checkpoint_path)}


def _tool_versions() -> dict[str, str]:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "notagen_trt": notagen_trt.__version__}


def _empty_past(layers: int, heads: int, batch: int = 1) -> list[torch.Tensor]:
    return [torch.zeros(batch, heads, 0, HEAD_DIM) for _ in range(2 * layers)]


def _patch_example(config: ModelConfig) -> tuple:
    # Non-empty past and batch 2 while tracing, so no dim is specialised to 0 or 1.
    past = [torch.randn(2, config.num_heads, 3, HEAD_DIM) for _ in range(2 * config.patch_num_layers)]
    return (torch.randint(0, VOCAB_SIZE, (2, 2, config.patch_size)), *past)


def _char_example(config: ModelConfig) -> tuple:
    past = [torch.randn(2, config.num_heads, 3, HEAD_DIM) for _ in range(2 * config.char_num_layers)]
    return (torch.randint(0, VOCAB_SIZE, (2, 2)), torch.randn(2, config.hidden_size), *past)


# ---------------------------------------------------------------- parity: ORT CPU vs PyTorch

def check_parity(model: NotaGenModel, graph_dir: Path, steps: int = PARITY_STEPS,
                 tolerance: float = PARITY_TOLERANCE, seed: int = 0) -> dict[str, Any]:
    """Max |diff| per phase between ONNX Runtime (CPU) and PyTorch; NotaGenError above tolerance.

    Patch level: a prefill of several patches, then ``steps`` single-patch steps. Char level:
    a prefill of the hidden state plus a few tokens, single-char steps up to 17 positions, and
    new patches started until ``steps`` steps are covered. Inputs are random: the check is about
    the graphs, and random weights and tokens exercise them as well as text does."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {name: ort.InferenceSession(str(graph_dir / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
                for name in ("patch_decoder", "char_decoder")}
    prefill = min(8, config.patch_length - 1)
    steps_patch = min(steps, config.patch_length - prefill)
    diffs = {"patch_prefill": 0.0, "patch_step": 0.0, "char_prefill": 0.0, "char_step": 0.0}

    def run(name: str, feeds: list[torch.Tensor], expected: tuple, key: str) -> list[np.ndarray]:
        names = [i.name for i in sessions[name].get_inputs()]
        got = sessions[name].run(None, {n: t.numpy() for n, t in zip(names, feeds)})
        flat = [expected[0], *[t for kv in expected[1] for t in kv]]  # hidden / logits, every present
        for e, g in zip(flat, got, strict=True):
            diffs[key] = max(diffs[key], float(np.abs(e.numpy() - g).max()))
        return got

    # Expected values come from the model's own forward (not the export wrappers), so a wrapper
    # bug shows up here too.
    patch, char = model.patch_level_decoder, model.char_level_decoder
    past = _empty_past(config.patch_num_layers, config.num_heads)
    hidden = None
    with torch.no_grad():
        for i, n in enumerate([prefill] + [1] * steps_patch):
            patches = torch.randint(0, VOCAB_SIZE, (1, n, config.patch_size), generator=gen)
            expected = patch(patches, _flat(tuple(past)) if i else None)
            out = run("patch_decoder", [patches, *past], expected, "patch_prefill" if i == 0 else "patch_step")
            hidden, past = torch.from_numpy(out[0][:, -1]), [torch.from_numpy(t) for t in out[1:]]

        done = 0
        while done < steps:
            first = torch.randint(0, VOCAB_SIZE, (1, 4), generator=gen)
            empty = _empty_past(config.char_num_layers, config.num_heads)
            out = run("char_decoder", [first, hidden, *empty], char(first, hidden), "char_prefill")
            past = [torch.from_numpy(t) for t in out[1:]]
            for _ in range(config.char_positions - first.shape[1]):
                token = torch.randint(0, VOCAB_SIZE, (1, 1), generator=gen)
                # patch_hidden must be ignored after position 0: feed noise to prove it.
                noise = torch.randn(hidden.shape, generator=gen)
                out = run("char_decoder", [token, noise, *past], char(token, past=_flat(tuple(past))), "char_step")
                past = [torch.from_numpy(t) for t in out[1:]]
                done += 1
            hidden = torch.randn(hidden.shape, generator=gen)
    results = {"tolerance": tolerance, "patch_steps": steps_patch, "char_steps": done,
               "max_abs_diff": diffs}
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        raise NotaGenError(f"{graph_dir}: ONNX Runtime differs from PyTorch by {diffs[worst]:.3g} in {worst} "
                           f"(tolerance {tolerance}); the graph is wrong, report it with the model config")
    return results


def check_engine_parity(model: NotaGenModel, graph_dir: Path, tolerance: float = PARITY_TOLERANCE,
                        seed: int = 0) -> dict[str, Any]:
    """The engine-ready graphs on ONNX Runtime (CPU) against their PyTorch modules: a context load
    into row 1 of 2, then patches with accepts and forced prefixes; ids must be equal and every
    float within ``tolerance``. The pieces tests hold them to the reference's pieces too."""
    torch.manual_seed(seed)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    modules = engine_graphs.modules(model)
    examples = engine_graphs.examples(model.config)
    diffs: dict[str, float] = {}
    session = lambda stem: ort.InferenceSession(str(graph_dir / f"{stem}.onnx"), opts,  # noqa: E731
                                                providers=["CPUExecutionProvider"])
    sessions = {name: session(name) for name in modules}
    _engine_parity_run(graph_dir, modules, sessions, examples, diffs, {})
    # Then each CPU form in its graph's place: the same function, so the same module.
    for name in engine_graphs.cpu_modules(model):
        form = f"{name}.cpu"
        _engine_parity_run(graph_dir, modules, {**sessions, name: session(form)}, examples, diffs, {name: form})
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        raise NotaGenError(f"{graph_dir}: ONNX Runtime differs from PyTorch by {diffs[worst]:.3g} in {worst} "
                           f"(tolerance {tolerance}); the graph is wrong, report it with the model config")
    return {"tolerance": tolerance, "max_abs_diff": diffs}


def _engine_parity_run(graph_dir: Path, modules: dict, sessions: dict, examples: dict, diffs: dict[str, float],
                       labels: dict[str, str]) -> None:
    """One context load and three patches through ``sessions``; the largest float difference per
    graph (under its label in ``labels``, a CPU form's, else its name) goes into ``diffs``; drawn
    ids must be equal."""

    def run(name: str, args: tuple) -> tuple:
        names = [i.name for i in sessions[name].get_inputs()]
        got = sessions[name].run(None, {n: t.numpy() for n, t in zip(names, args)})
        with torch.no_grad():
            want = modules[name](*args)
        for g, w in zip(got, want, strict=True):
            key = labels.get(name, name)
            if w.dtype in (torch.int64, torch.bool):
                if not np.array_equal(g, w.numpy()):
                    raise NotaGenError(f"{graph_dir}: {key} draws other ids than PyTorch; the graph is wrong, report "
                                       "it with the model config")
            else:
                diffs[key] = max(diffs.get(key, 0.0), float(np.abs(g - w.numpy()).max()))
        return want

    settings, state, past = examples["patch_engine"][:7], examples["patch_engine"][7:10], examples["patch_engine"][10:]
    loaded = run("context_loader", (examples["context_loader"][0], torch.tensor([1]), *state[:2], *past))
    position, hidden, past = loaded[0], loaded[1], loaded[2:]
    hidden_next = state[2]
    forced, mask = settings[1].clone(), settings[2].clone()
    forced[0, :3], mask[0, :3] = torch.tensor([ord("[") , ord("r"), ord(":")]), True
    for accept in (False, True, True):
        out = run("patch_engine", (settings[0], forced, mask, *settings[3:6], torch.tensor([accept, accept]),
                                   position, hidden, hidden_next, *past))
        position, hidden, hidden_next, past = out[1], out[2], out[3], out[4:]
