"""Load NotaGen checkpoints (.pth or .safetensors) strictly and safely.

``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would run code is
refused before anything runs. The model config is derived from the tensors' shapes and checked
against the file name when the name encodes one.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from notagen_trt.config import VOCAB_SIZE, ModelConfig, config_hints_from_filename
from notagen_trt.errors import CheckpointError

from .model import NotaGenModel

_PATCH_EMB = "patch_level_decoder.patch_embedding.weight"
_PATCH_WPE = "patch_level_decoder.base.wpe.weight"
_PATCH_LAYER = re.compile(r"^patch_level_decoder\.base\.h\.(\d+)\.")
_CHAR_LAYER = re.compile(r"^char_level_decoder\.base\.transformer\.h\.(\d+)\.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, as float32 on the CPU (training extras dropped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; pass --checkpoint with a .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        tensors = _read_pth(path)
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (or, before PyTorch 1.6, a protocol-2 pickle): anything else
    # is damage, not a pickle to refuse.
    if not (zipfile.is_zipfile(path) or magic[:2] == b"\x80\x02"):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?); "
                              "re-download or re-save it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors, which could "
            f"run code ({first}). Only use checkpoints from a source you trust, saved as tensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # training checkpoints also hold optimizer, lr_sched, epoch, ...
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict of tensors")
    return obj


def infer_config(state: dict[str, torch.Tensor], filename: str = "") -> ModelConfig:
    """The ModelConfig whose parameters have these shapes."""
    for key in (_PATCH_EMB, _PATCH_WPE):
        if key not in state:
            raise CheckpointError(f"{filename or 'checkpoint'}: missing key {key!r}; is this a NotaGen checkpoint?")
    hidden, flat = state[_PATCH_EMB].shape
    patch_layers = {int(m.group(1)) for k in state if (m := _PATCH_LAYER.match(k))}
    char_layers = {int(m.group(1)) for k in state if (m := _CHAR_LAYER.match(k))}
    try:
        config = ModelConfig(
            hidden_size=hidden,
            patch_num_layers=max(patch_layers, default=-1) + 1,
            char_num_layers=max(char_layers, default=-1) + 1,
            patch_length=state[_PATCH_WPE].shape[0],
            patch_size=flat // VOCAB_SIZE,
        )
    except ValueError as exc:
        raise CheckpointError(f"{filename or 'checkpoint'}: tensor shapes match no NotaGen config: {exc}") from None
    hints = config_hints_from_filename(Path(filename).name)
    wrong = {k: (v, getattr(config, k)) for k, v in hints.items() if getattr(config, k) != v}
    if wrong:
        detail = ", ".join(f"{k}: name says {a}, tensors say {b}" for k, (a, b) in wrong.items())
        raise CheckpointError(f"{filename}: file name and weights disagree ({detail}); rename or re-save the file")
    return config


def check_keys(state: dict[str, torch.Tensor], config: ModelConfig, filename: str = "") -> None:
    """Raise one error listing every missing, unexpected and mis-shaped key."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in NotaGenModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    problems = [(n, keys) for n, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        parts = [f"{n} {len(keys)}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}" for n, keys in problems]
        raise CheckpointError(f"{filename or 'checkpoint'}: does not match a NotaGen {config}: " + "; ".join(parts))


def load_model(path: str | Path) -> NotaGenModel:
    """A NotaGenModel in eval mode with the checkpoint's weights, or a CheckpointError."""
    state = read_state_dict(path)
    config = infer_config(state, str(path))
    check_keys(state, config, str(path))
    model = NotaGenModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_checkpoint(model: NotaGenModel, path: str | Path, **extras: object) -> None:
    """Save in the published format: ``{'model': state_dict, **extras}``."""
    torch.save({"model": model.state_dict(), **extras}, path)
