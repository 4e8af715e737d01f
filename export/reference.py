"""PyTorch reference generator: the published algorithm and a KV-cached equivalent.

``published`` reproduces the published code's cost model: every patch re-runs the patch decoder
over the whole context and every character re-runs the char decoder over its prefix, with a
device->host copy and numpy sampling per character. ``cached`` keeps KV caches at both levels.
Both drive the runtime's generation loop, so for one seed they write the same piece.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from notagen_trt.runtime.engine import generate
from notagen_trt.runtime.executor import StepExecutor, StepSession
from notagen_trt.runtime.piece import GenerationConfig, Piece
from notagen_trt.runtime.prompts import Prompt

from .model import KV, NotaGenModel

Mode = Literal["published", "cached"]


class _TorchSession(StepSession):
    def __init__(self, model: NotaGenModel, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._context: torch.Tensor | None = None  # published mode: every patch so far
        self._past: list[KV] | None = None  # cached mode: patch-level KV cache

    def _tensor(self, values: np.ndarray | list[int]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.int64), device=self.device)

    @staticmethod
    def _host(x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()


class PublishedSession(_TorchSession):
    @torch.inference_mode()
    def extend(self, patches: np.ndarray) -> np.ndarray:
        new = self._tensor(patches)[None]
        self._context = new if self._context is None else torch.cat([self._context, new], dim=1)
        hidden, _ = self.model.patch_level_decoder(self._context)
        return self._host(hidden[0, -1])

    @torch.inference_mode()
    def _char_logits(self) -> np.ndarray:
        logits, _ = self.model.char_level_decoder(self._tokens[None], self._hidden[None])
        return self._host(logits[0, -1])

    def char_start(self, hidden: np.ndarray, tokens: list[int]) -> np.ndarray:
        self._hidden = torch.as_tensor(hidden, device=self.device)
        self._tokens = self._tensor(tokens)
        return self._char_logits()

    def char_step(self, token: int) -> np.ndarray:
        self._tokens = torch.cat([self._tokens, self._tensor([token])])
        return self._char_logits()


class CachedSession(_TorchSession):
    @torch.inference_mode()
    def extend(self, patches: np.ndarray) -> np.ndarray:
        hidden, self._past = self.model.patch_level_decoder(self._tensor(patches)[None], self._past)
        return self._host(hidden[0, -1])

    @torch.inference_mode()
    def char_start(self, hidden: np.ndarray, tokens: list[int]) -> np.ndarray:
        h = torch.as_tensor(hidden, device=self.device)[None]
        logits, self._char_past = self.model.char_level_decoder(self._tensor(tokens)[None], h)
        return self._host(logits[0, -1])

    @torch.inference_mode()
    def char_step(self, token: int) -> np.ndarray:
        logits, self._char_past = self.model.char_level_decoder(self._tensor([[token]]), past=self._char_past)
        return self._host(logits[0, -1])


class ReferenceBackend:
    """A backend (see runtime.executor) running the PyTorch model in either mode."""

    default_rows = 1

    def __init__(self, model: NotaGenModel, mode: Mode = "cached", device: str | torch.device = "cpu") -> None:
        if mode not in ("published", "cached"):
            raise ValueError(f"mode must be 'published' or 'cached', got {mode!r}")
        self.model = model.eval().to(device)
        self.config = model.config
        self.mode = mode
        self.device = torch.device(device)
        self.name = f"torch-{mode}"

    def new_session(self) -> _TorchSession:
        cls = PublishedSession if self.mode == "published" else CachedSession
        return cls(self.model, self.device)

    def executor(self, rows: int = 1) -> StepExecutor:
        return StepExecutor(self.name, self.config, [self.new_session() for _ in range(rows)])

    def generate(self, prompt: Prompt | None = None, config: GenerationConfig = GenerationConfig()) -> Piece:
        return generate(self.executor(1), prompt, config)
