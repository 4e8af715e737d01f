import os

# Tiny test models run faster on one thread, and OpenMP threads spinning against other work on
# a 2-core machine can make each small op 100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# A prompt the tests generate under (one of the 112 valid ones).
BACH = ("Baroque", "Bach, Johann Sebastian", "Choral")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A tiny model trained for seconds on the test tunes, so it writes real body lines.
    PATCH_LENGTH 32 is shorter than a piece, so generation has to rebuild its context."""
    from notagen_trt.export.train import TrainConfig, train

    d = tmp_path_factory.mktemp("tunes")
    for i, tune in enumerate(TUNES):
        (d / f"{i}.abc").write_text(tune)
    cfg = ModelConfig(hidden_size=64, patch_num_layers=2, char_num_layers=1, patch_length=32)
    train(cfg, d, d, d / "m.pth", TrainConfig(steps=200, eval_every=200, warmup=10, lr=3e-3, dropout=0.0), log=lambda *_: None)
    return d / "m.pth"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random-weight tiny model: its checkpoint (tiny.pth) and its exported ONNX directory (onnx/)."""
    import torch

    from notagen_trt.export.checkpoint import save_checkpoint
    from notagen_trt.export.model import NotaGenModel
    from notagen_trt.export.onnx_export import export_onnx

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    model = NotaGenModel(ModelConfig(hidden_size=64, patch_num_layers=2, char_num_layers=1, patch_length=32))
    save_checkpoint(model, root / "tiny.pth")
    export_onnx(model, root / "onnx", checkpoint_path=root / "tiny.pth")
    return root


@pytest.fixture(scope="session")
def trained(trained_checkpoint):
    from notagen_trt.export.checkpoint import load_model

    return load_model(trained_checkpoint)


@pytest.fixture(scope="session")
def demo():
    """The shipped demo model (PyTorch)."""
    from notagen_trt.demo import DEMO_CHECKPOINT
    from notagen_trt.export.checkpoint import load_model

    return load_model(DEMO_CHECKPOINT)


@pytest.fixture(scope="session")
def trained_onnx(trained, trained_checkpoint, tmp_path_factory):
    """The trained model exported to ONNX (with its checkpoint recorded in the manifest)."""
    from notagen_trt.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("trained-onnx")
    export_onnx(trained, out, checkpoint_path=trained_checkpoint)
    return out


@pytest.fixture(scope="session")
def demo_variant(tmp_path_factory):
    """demo_variant(precision): the demo model quantized once per session, on first request
    (16 calibration pieces: tests/test_precision.py gates on them)."""
    from notagen_trt.demo import demo_model_dir
    from notagen_trt.engines.quantize import quantize

    made = {}

    def get(precision: str):
        if precision not in made:
            made[precision] = tmp_path_factory.mktemp(precision)
            quantize(demo_model_dir(), precision, made[precision], calib_pieces=16)
        return made[precision]

    return get


class LoopbackServer:
    """An ASGI app under uvicorn on a thread, on a free 127.0.0.1 port (service and page tests)."""

    def __init__(self, app, start_seconds: float = 30) -> None:
        import socket
        import threading
        import time

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_seconds
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def stop_server(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
