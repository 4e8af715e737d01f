import os

# Tiny test models run faster on one thread, and OpenMP threads spinning against other work on
# a 2-core machine can make each small op 100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from notagen_trt.config import ModelConfig  # noqa: E402

# Two tunes in NotaGen's training format (interleaved voices, one bar line per voice group).
CHORALE = """%Baroque
%Bach, Johann Sebastian
%Choral
%%score { 1 | 2 }
L:1/8
M:4/4
K:G
V:1 treble nm="Soprano"
V:2 bass nm="Bass"
[V:1]z6 B2|[V:2]z6 G,2|
[V:1]d2 c2 B2 A2|[V:2]G,2 A,2 B,2 C2|
[V:1]G4 z2 B2|[V:2]D4 z2 G,2|
[V:1]c2 B2 A4|:[V:2]C2 D2 D,4|:
[V:1]G8|][V:2]G,8|]
"""

FOLK = """L:1/8
M:6/8
K:D
V:1 treble
[V:1]|:A|dfa afd|
[V:1]ece ABc|
[V:1]dfa agf|
[V:1]e3 d2:|
"""

TUNES = [CHORALE, FOLK]


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(hidden_size=64, patch_num_layers=2, char_num_layers=2, patch_length=64)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model trained for seconds on the test tunes, so it writes real body lines.
    PATCH_LENGTH 32 is shorter than a piece, so generation has to rebuild its context."""
    from notagen_trt.export.checkpoint import load_model
    from notagen_trt.export.train import TrainConfig, train

    d = tmp_path_factory.mktemp("tunes")
    for i, tune in enumerate(TUNES):
        (d / f"{i}.abc").write_text(tune)
    cfg = ModelConfig(hidden_size=64, patch_num_layers=2, char_num_layers=1, patch_length=32)
    train(cfg, d, d, d / "m.pth", TrainConfig(steps=200, eval_every=200, warmup=10, lr=3e-3, dropout=0.0), log=lambda *_: None)
    return load_model(d / "m.pth")


