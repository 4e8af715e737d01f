"""Model configurations shared by every stage (no torch here: the runtime reads them too)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

PATCH_SIZE = 16  # characters per patch
VOCAB_SIZE = 128  # ASCII; token id = ord(char)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
HEAD_DIM = 64  # GPT-2 heads are 64 wide in every published size


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a NotaGen model: a patch-level GPT-2 over patches and a char-level GPT-2."""

    hidden_size: int
    patch_num_layers: int
    char_num_layers: int
    patch_length: int  # maximum number of patches in the context (patch decoder n_positions)
    patch_size: int = PATCH_SIZE

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.hidden_size % HEAD_DIM:
            raise ValueError(f"hidden_size must be a positive multiple of {HEAD_DIM}, got {self.hidden_size}")
        for name in ("patch_num_layers", "char_num_layers", "patch_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.patch_size != PATCH_SIZE:
            raise ValueError(f"only patch_size {PATCH_SIZE} is supported, got {self.patch_size}")

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM

    @property
    def char_positions(self) -> int:
        """The char decoder sees the patch hidden state plus up to 16 characters."""
        return self.patch_size + 1

    def num_parameters(self) -> tuple[int, int]:
        """(patch-level, char-level) parameter counts, the char level counting tied lm_head once."""
        h = self.hidden_size
        block = 12 * h * h + 13 * h  # c_attn, c_proj, c_fc, mlp c_proj + biases + two LayerNorms
        patch = (self.patch_size * VOCAB_SIZE * h + h) + h + self.patch_length * h
        patch += self.patch_num_layers * block + 2 * h
        char = VOCAB_SIZE * h + self.char_positions * h + self.char_num_layers * block + 2 * h
        return patch, char

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    "small": ModelConfig(hidden_size=768, patch_num_layers=12, char_num_layers=3, patch_length=2048),
    "medium": ModelConfig(hidden_size=1024, patch_num_layers=16, char_num_layers=3, patch_length=2048),
    "large": ModelConfig(hidden_size=1280, patch_num_layers=20, char_num_layers=6, patch_length=1024),
}
PRESETS["x"] = PRESETS["large"]  # NotaGen-X has the large shape

_NAME_FIELDS = {
    "p_size": "patch_size",
    "p_length": "patch_length",
    "p_layers": "patch_num_layers",
    "h_size": "hidden_size",
    "c_layers": "char_num_layers",
}


def config_hints_from_filename(name: str) -> dict[str, int]:
    """Config values encoded in a released checkpoint's file name, e.g.
    ``weights_notagenx_p_size_16_p_length_1024_p_layers_20_h_size_1280_c_layers_6_...pth``."""
    hints = {}
    for key, field in _NAME_FIELDS.items():
        match = re.search(rf"(?:^|_){key}_(\d+)(?=_|\.|$)", name)
        if match:
            hints[field] = int(match.group(1))
    return hints
