"""The model loads published-layout checkpoints strictly and matches an independent GPT-2."""

import os
import pickle

import pytest
import torch
from torch.nn import functional as F

from notagen_trt.config import PRESETS, ModelConfig
from notagen_trt.errors import CheckpointError
from notagen_trt.export.checkpoint import load_model, save_checkpoint
from notagen_trt.export.model import NotaGenModel

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402

CFG = ModelConfig(hidden_size=128, patch_num_layers=3, char_num_layers=2, patch_length=32)


def published_keys(cfg: ModelConfig) -> set[str]:
    """The key list NOTAGEN.md gives for a published checkpoint."""
    block = ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.weight", "attn.c_attn.bias",
             "attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    p, c = "patch_level_decoder.", "char_level_decoder.base."
    keys = {p + "patch_embedding.weight", p + "patch_embedding.bias", p + "base.wte.weight",
            p + "base.wpe.weight", p + "base.ln_f.weight", p + "base.ln_f.bias",
            c + "transformer.wte.weight", c + "transformer.wpe.weight", c + "transformer.ln_f.weight",
            c + "transformer.ln_f.bias", c + "lm_head.weight"}
    keys |= {f"{p}base.h.{i}.{b}" for i in range(cfg.patch_num_layers) for b in block}
    keys |= {f"{c}transformer.h.{i}.{b}" for i in range(cfg.char_num_layers) for b in block}
    return keys


class IndependentNotaGen(torch.nn.Module):
    """NotaGen written from NOTAGEN.md on Hugging Face GPT-2 with inputs_embeds."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        common = dict(n_embd=cfg.hidden_size, n_head=cfg.num_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                      bos_token_id=None, eos_token_id=None)
        self.patch_embedding = torch.nn.Linear(16 * 128, cfg.hidden_size)
        self.patch_base = GPT2Model(GPT2Config(vocab_size=1, n_positions=cfg.patch_length,
                                               n_layer=cfg.patch_num_layers, **common))
        self.char = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=17,
                                               n_layer=cfg.char_num_layers, **common))
        with torch.no_grad():  # non-trivial LayerNorm parameters so they are really compared
            for name, param in self.named_parameters():
                if "ln_" in name:
                    param.add_(torch.randn_like(param) * 0.1)

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"patch_level_decoder.patch_embedding.{k}": v for k, v in self.patch_embedding.state_dict().items()}
        sd |= {f"patch_level_decoder.base.{k}": v for k, v in self.patch_base.state_dict().items()}
        sd |= {f"char_level_decoder.base.{k}": v for k, v in self.char.state_dict().items()}
        return {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, n, _ = patches.shape
        onehot = F.one_hot(patches, 128).reshape(b, n, -1).float()
        hidden = self.patch_base(inputs_embeds=self.patch_embedding(onehot)).last_hidden_state
        targets = patches[:, 1:].reshape(-1, 16)
        tokens = torch.cat([torch.ones_like(targets[:, :1]), targets], dim=1)
        embeds = self.char.transformer.wte(tokens)
        embeds[:, 0] = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return self.char(inputs_embeds=embeds).logits.view(b, n - 1, 17, 128)


@pytest.fixture(scope="module")
def reference() -> IndependentNotaGen:
    torch.manual_seed(0)
    return IndependentNotaGen(CFG).eval()


def random_patches(n: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (2, n, 16), generator=g)


def test_state_dict_keys_are_the_published_layout():
    assert set(NotaGenModel(CFG).state_dict()) == published_keys(CFG)


def test_logits_match_independent_hf_implementation(reference, tmp_path):
    sd = reference.published_state_dict()
    assert set(sd) == published_keys(CFG)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3, "min_eval_loss": 1.0}, path)
    model = load_model(path)
    assert model.config == CFG
    patches = random_patches()
    with torch.no_grad():
        ours, theirs = model(patches), reference(patches)
    assert ours.shape == (2, 8, 17, 128)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_kv_cache_steps_match_full_forward():
    torch.manual_seed(1)
    model = NotaGenModel(CFG).eval()
    patches = random_patches(12)
    with torch.no_grad():
        full, _ = model.patch_level_decoder(patches)
        h1, past = model.patch_level_decoder(patches[:, :5])
        h2, past = model.patch_level_decoder(patches[:, 5:6], past)
        h3, _ = model.patch_level_decoder(patches[:, 6:], past)
        stepped = torch.cat([h1, h2, h3], dim=1)
        assert (full - stepped).abs().max().item() <= 1e-5
        tokens = torch.randint(0, 128, (2, 17))
        cfull, _ = model.char_level_decoder(tokens, full[:, -1])
        c1, cpast = model.char_level_decoder(tokens[:, :3], full[:, -1])
        steps = [c1]
        for t in range(3, 17):
            c, cpast = model.char_level_decoder(tokens[:, t : t + 1], past=cpast)
            steps.append(c)
        assert (cfull - torch.cat(steps, dim=1)).abs().max().item() <= 1e-5


def test_safetensors_checkpoint_loads(reference, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.clone().contiguous() for k, v in reference.published_state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    model = load_model(path)
    assert torch.equal(model.state_dict()["patch_level_decoder.base.wpe.weight"], sd["patch_level_decoder.base.wpe.weight"])


def test_config_comes_from_shapes_and_is_checked_against_name(tmp_path):
    model = NotaGenModel(CFG)
    good = tmp_path / "weights_p_size_16_p_length_32_p_layers_3_h_size_128_c_layers_2_lr_1e-05.pth"
    save_checkpoint(model, good)
    assert load_model(good).config == CFG
    bad = tmp_path / "weights_p_size_16_p_length_32_p_layers_20_h_size_128.pth"
    save_checkpoint(model, bad)
    with pytest.raises(CheckpointError, match="p.*20.*3|patch_num_layers: name says 20, tensors say 3"):
        load_model(bad)


def test_bad_keys_fail_with_one_message_naming_them(tmp_path):
    sd = NotaGenModel(CFG).state_dict()
    sd.pop("char_level_decoder.base.transformer.h.1.mlp.c_fc.bias")
    sd["patch_level_decoder.base.h.0.attn.bias"] = torch.zeros(1)
    sd["patch_level_decoder.base.ln_f.weight"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert "missing 1: char_level_decoder.base.transformer.h.1.mlp.c_fc.bias" in msg
    assert "unexpected 1: patch_level_decoder.base.h.0.attn.bias" in msg
    assert "mis-shaped 1: patch_level_decoder.base.ln_f.weight (7,) != (128,)" in msg
    assert "\n" not in msg


def test_truncated_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "m.pth"
    save_checkpoint(NotaGenModel(CFG), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.pth")


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": {"w": torch.zeros(1)}, "payload": _Exploit(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path)
    assert not marker.exists()
    # Sanity: the payload really would have run under an unsafe load.
    pickle.loads(pickle.dumps(_Exploit(str(marker))))
    assert marker.exists()


def test_parameter_counts_match_published_sizes():
    patch, char = PRESETS["small"].num_parameters()
    assert patch + char == 109_579_776
    patch, char = PRESETS["x"].num_parameters()
    assert (round(patch / 1e6, 2), round(char / 1e6, 2)) == (397.49, 118.25)
    assert patch + char == 515_738_880
    model = NotaGenModel(CFG)
    assert sum(p.numel() for p in model.parameters()) == sum(CFG.num_parameters())
