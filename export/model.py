"""NotaGen in PyTorch, laid out so a published checkpoint's state dict loads strictly.

A GPT-2 written out in full (nanoGPT style) rather than Hugging Face's, because export needs
control over the KV-cache inputs and outputs. Module names mirror the published checkpoint:
``patch_level_decoder.{patch_embedding, base.*}`` and
``char_level_decoder.base.{transformer.*, lm_head}``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from notagen_trt.config import PAD_ID, VOCAB_SIZE, ModelConfig

KV = tuple[torch.Tensor, torch.Tensor]  # (key, value), each [batch, heads, seq, head_dim]


class Conv1D(nn.Module):
    """GPT-2's linear layer: the weight is stored [in, out]."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = Conv1D(hidden, 3 * hidden)
        self.c_proj = Conv1D(hidden, hidden)

    def forward(self, x: torch.Tensor, past: KV | None) -> tuple[torch.Tensor, KV]:
        b, t, h = x.shape
        q, k, v = self.c_attn(x).split(h, dim=2)
        q, k, v = (z.view(b, t, self.heads, h // self.heads).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        total = k.shape[2]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        # Query i (absolute position total - t + i) sees keys 0 .. total - t + i.
        causal = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(total - t)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        y = F.softmax(scores, dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, t, h)
        return self.c_proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(hidden, 4 * hidden)
        self.c_proj = Conv1D(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout  # residual dropout, active only in training
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-5)
        self.attn = Attention(hidden, heads)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-5)
        self.mlp = MLP(hidden)

    def forward(self, x: torch.Tensor, past: KV | None) -> tuple[torch.Tensor, KV]:
        a, present = self.attn(self.ln_1(x), past)
        x = x + F.dropout(a, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.ln_2(x)), self.dropout, self.training), present


class GPT2(nn.Module):
    """GPT-2 body over input embeddings: positions, blocks, final LayerNorm."""

    def __init__(self, vocab: int, positions: int, layers: int, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(positions, hidden)
        self.h = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden, eps=1e-5)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)

    def forward(self, embeds: torch.Tensor, past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        start = 0 if past is None else past[0][0].shape[2]
        positions = torch.arange(start, start + embeds.shape[1], device=embeds.device)
        x = embeds + self.wpe(positions)
        presents = []
        for i, block in enumerate(self.h):
            x, kv = block(x, None if past is None else past[i])
            presents.append(kv)
        return self.ln_f(x), presents


class PatchLevelDecoder(nn.Module):
    """Patches -> hidden states; hidden state i predicts patch i + 1."""

    def __init__(self, config: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.patch_embedding = nn.Linear(config.patch_size * VOCAB_SIZE, h)
        # vocab_size 1: the published model keeps an unused [1, H] wte parameter.
        self.base = GPT2(1, config.patch_length, config.patch_num_layers, h, config.num_heads, dropout)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, n, 16] char ids -> [B, n, H]. The published one-hot @ weight is a sum of 16
        weight columns (column = position * 128 + char), so gather them instead."""
        columns = patches + torch.arange(self.config.patch_size, device=patches.device) * VOCAB_SIZE
        table = self.patch_embedding.weight.t()  # [2048, H]
        return table[columns].sum(dim=-2) + self.patch_embedding.bias

    def forward(self, patches: torch.Tensor, past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        return self.base(self.embed(patches), past)


class CharLM(nn.Module):
    """Holds ``transformer`` and ``lm_head`` like HF's GPT2LMHeadModel, so keys match."""

    def __init__(self, config: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        h = config.hidden_size
        self.transformer = GPT2(VOCAB_SIZE, config.char_positions, config.char_num_layers, h, config.num_heads, dropout)
        self.lm_head = nn.Linear(h, VOCAB_SIZE, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2


class CharLevelDecoder(nn.Module):
    """Generates one patch's characters; position 0's input is the patch hidden state."""

    def __init__(self, config: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = CharLM(config, dropout)

    def forward(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor | None = None,
        past: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """tokens [B, t] -> logits [B, t, 128]. With ``hidden`` [B, H] (only when there is no
        past), position 0's embedding is replaced by it: tokens[:, 0] is then a placeholder."""
        embeds = self.base.transformer.wte(tokens)
        if hidden is not None:
            embeds = torch.cat([hidden.unsqueeze(1).to(embeds.dtype), embeds[:, 1:]], dim=1)
        x, presents = self.base.transformer(embeds, past)
        return self.base.lm_head(x), presents


class NotaGenModel(nn.Module):
    """The whole model; ``forward`` is teacher forcing (training / evaluation)."""

    def __init__(self, config: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.patch_level_decoder = PatchLevelDecoder(config, dropout)
        self.char_level_decoder = CharLevelDecoder(config, dropout)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [B, n, 16] -> char logits [B, n - 1, 17, 128] for patches 1..n-1.

        Char position t (t = 0..15) of row i predicts character t of patch i + 1; position 16
        is computed but predicts nothing (the published model does the same)."""
        hidden, _ = self.patch_level_decoder(patches)
        b, n, _ = patches.shape
        targets = patches[:, 1:].reshape(-1, self.config.patch_size)
        bos = torch.ones_like(targets[:, :1])
        tokens = torch.cat([bos, targets], dim=1)  # [B*(n-1), 17]
        logits, _ = self.char_level_decoder(tokens, hidden[:, :-1].reshape(-1, hidden.shape[-1]))
        return logits.view(b, n - 1, self.config.char_positions, VOCAB_SIZE)

    def char_nll(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed negative log-likelihood in nats, number of predicted characters) over every
        non-pad character of patches 1..n-1: the published training loss's positions."""
        logits = self(patches)[:, :, : self.config.patch_size].float()
        targets = patches[:, 1:]
        mask = targets != PAD_ID
        nll = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), reduction="none")
        return (nll * mask.reshape(-1)).sum(), mask.sum()
