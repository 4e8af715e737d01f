"""The one interface every backend implements for the generation loop.

A session is one piece's decoding state on one backend (PyTorch reference, ONNX Runtime,
TensorRT). The loop in ``generate.py`` only talks to this protocol, so every backend runs the
same published algorithm and, fed the same uniforms, writes the same piece.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class DecoderSession(Protocol):
    def reset(self) -> None:
        """Forget the patch context (before a context rebuild)."""

    def extend(self, patches: np.ndarray) -> np.ndarray:
        """Append patches [k, 16] to the context; return the last patch's hidden state [H]."""

    def char_start(self, hidden: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Start a patch: position 0 is ``hidden``, tokens[1:] the forced prefix (tokens[0] is
        the bos placeholder). Return the logits [128] for the next character."""

    def char_step(self, token: int) -> np.ndarray:
        """Append one character to the patch in progress; return the next logits [128]."""

    # Optional: sample_patch(hidden, tokens, uniforms, params) -> list[int], the characters
    # char_start / char_step and ``sample`` would draw with these uniforms, in one call
    # (generate.sample_patch uses it where a session has it; ONNX Runtime CPU sessions do).


class Backend(Protocol):
    name: str

    def new_session(self) -> DecoderSession:
        """A fresh session; sessions of one backend may run in different threads."""
