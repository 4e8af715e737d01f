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
