"""The one-call patch sampler (runtime/patch_sampler.py): its in-graph draws against sampling.py,
and whole pieces against the per-character loop it replaces on the ONNX Runtime CPU backend."""

from collections import Counter
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import BACH

from notagen_trt.demo import demo_model_dir
from notagen_trt.errors import NotaGenError
from notagen_trt.manifest import model_config, read_manifest
from notagen_trt.runtime import patch_sampler
from notagen_trt.runtime.engine import Engine, PieceRequest, generate
from notagen_trt.runtime.executor import StepExecutor, StepSession
from notagen_trt.runtime.piece import GenerationConfig
from notagen_trt.runtime.onnx_backend import OrtBackend
from notagen_trt.runtime.prompts import resolve_prompt
from notagen_trt.runtime.sampling import SamplingParams, sample

PARAMS = [SamplingParams(), SamplingParams(top_k=0, top_p=1.0, temperature=1.0),
          SamplingParams(top_k=0, top_p=0.5, temperature=0.7), SamplingParams(top_k=1),
          SamplingParams(top_k=128, top_p=1.0, temperature=2.0), SamplingParams(top_k=4, top_p=0.5, temperature=1.0),
          SamplingParams(top_k=2, top_p=0.5, temperature=3.0), SamplingParams(top_k=0, top_p=0.25, temperature=0.5),
          SamplingParams(top_k=50, top_p=0.75, temperature=1.2), SamplingParams(top_k=8, top_p=0.999999, temperature=1.5),
          SamplingParams(top_k=0, top_p=1e-9, temperature=1.0)]


@pytest.fixture(scope="module")
def in_graph():
    """sample() through the ONNX sampler the patch sampler runs."""
    session = ort.InferenceSession(patch_sampler.sampler_model().SerializeToString(), providers=["CPUExecutionProvider"])

    def draw(logits: np.ndarray, u: float, params: SamplingParams) -> int:
        feeds = {"logits": logits.astype(np.float32)[None, None], "u": np.array(u),
                 "top_k": np.array(params.top_k or 128, dtype=np.int64), "top_p": np.array(params.top_p),
                 "temperature": np.array(params.temperature)}
        return int(session.run(None, feeds)[0][0, 0])

    return draw


def _adversarial_row(rng: np.random.Generator, kind: int) -> np.ndarray:
    x = rng.normal(size=128) * rng.choice([0.01, 0.3, 1, 3, 8, 30])
    if kind == 1:  # ties at the top
        x[rng.integers(0, 128, rng.integers(2, 9))] = x.max() + rng.choice([0.0, 1.0, 5.0])
    elif kind == 2:  # ties everywhere
        x = np.round(x)
    elif kind == 3:  # one dominant token
        x[rng.integers(128)] += rng.choice([20.0, 50.0, 100.0])
    elif kind == 4:  # near uniform
        x = rng.normal(size=128) * 1e-6
    elif kind == 5:  # a tied head over an exactly uniform rest
        x = np.zeros(128)
        x[rng.choice(128, rng.integers(1, 128), replace=False)] = 1.0
    elif kind == 6:  # masked: exp underflows to exact zeros
        x = np.full(128, -1e4)
        x[rng.integers(0, 128, rng.integers(1, 6))] = rng.choice([0.0, 3.0])
    elif kind == 7:  # few distinct values
        x = rng.choice([-3.0, 0.0, 1.5, 2.0], size=128)
    return x.astype(np.float32)


def test_in_graph_sampler_draws_the_numpy_ids(in_graph):
    """24,000 draws over random and adversarial rows and settings, uniforms as generation draws
    them: not one id differs. (Exp and Pow differ from numpy's by an ulp on some inputs, so a
    uniform within ulps of a cdf step could: about 1e-15 per draw at the published settings.)"""
    rng = np.random.default_rng(0)
    mismatches = []
    for i in range(24_000):
        logits, params, u = _adversarial_row(rng, i % 8), PARAMS[i % len(PARAMS)], rng.random()
        want, got = int(sample(logits, u, params)), in_graph(logits, u, params)
        if got != want:
            mismatches.append((i, params, u, got, want))
    assert mismatches == []


def test_ties_on_the_top_p_boundary_cut_where_numpy_cuts(in_graph):
    """k tied leaders with top_k = k weigh exactly 1.0 each (exp(0)), so the running sums are
    exact and top_p = j/k sits exactly on a boundary. Weights that were probabilities instead
    (a softmax, whose ONNX Runtime and numpy roundings differ by ulps) moved the cut a whole token
    on some of these draws: the first try of the running-sum rule failed here that way."""
    rng = np.random.default_rng(1)
    for i in range(3000):
        k = (2, 4, 8, 16)[i % 4]
        logits = rng.normal(size=128) * 2
        logits[rng.choice(128, k, replace=False)] = logits.max() + rng.choice([0.0, 0.5, 3.0])
        params = SamplingParams(top_k=k, top_p=float(rng.choice([0.25, 0.5, 0.75])),
                                temperature=float(rng.choice([1.0, 1.2, 0.7])))
        u = rng.random()
        assert in_graph(logits.astype(np.float32), u, params) == int(sample(logits.astype(np.float32), u, params))


def test_a_block_of_uniforms_is_the_same_numbers_as_one_at_a_time():
    """PieceState.request draws a patch's uniforms at once; pieces depend on this."""
    one_at_a_time = np.random.default_rng(3)
    assert np.random.default_rng(3).random(16).tolist() == [one_at_a_time.random() for _ in range(16)]


class _PerCharacter(StepSession):
    """The same session driven the old way: char_start / char_step and a numpy draw per character
    (StepSession's shared default ``sample_patch``)."""

    def __init__(self, session) -> None:
        self.session = session

    def reset(self):
        self.session.reset()

    def extend(self, patches):
        return self.session.extend(patches)

    def char_start(self, hidden, tokens):
        return self.session.char_start(hidden, tokens)

    def char_step(self, token):
        return self.session.char_step(token)


def _one_call(backend: OrtBackend):
    session = backend.new_session()

    def stepped(*_args):
        raise AssertionError("the one-call path stepped the char decoder")

    session.char_start = session.char_step = stepped
    return session


def _row(backend: OrtBackend, session) -> StepExecutor:
    return StepExecutor("test", backend.config, [session])


def _sample(session, hidden, prefix, seed, params):
    uniforms = np.zeros(16)
    uniforms[len(prefix):] = np.random.default_rng(seed).random(16 - len(prefix))
    return session.sample_patch(hidden, prefix, uniforms, params)


@pytest.fixture(scope="module")
def models(trained_onnx, demo_variant):
    return {"trained": trained_onnx, "demo-fp32": demo_model_dir(),
            **{f"demo-{p}": demo_variant(p) for p in ("int8-wo", "fp16", "int8")}}


@pytest.mark.parametrize("model", ["trained", "demo-fp32", "demo-int8-wo"])
@pytest.mark.parametrize("seed, bars", [(0, None), (1, None), (2, 3)])
def test_one_call_pieces_equal_per_character_pieces(models, model, seed, bars):
    """On the trained model a loop PATCH_LENGTH of 22 makes generation rebuild its context, which
    continues an open patch: forced prefixes of many lengths besides ``[r:0/``."""
    backend = OrtBackend(models[model], threads=1)
    config = GenerationConfig(seed=seed, max_patches=100, bars=bars)
    prompt, length = resolve_prompt(*BACH), 22 if model == "trained" else backend.config.patch_length
    ours = generate(_row(backend, _one_call(backend)), prompt, config, length)
    ref = generate(_row(backend, _PerCharacter(backend.new_session())), prompt, config, length)
    assert (ours.text, ours.patches, ours.stop_reason, ours.rebuilds) == (ref.text, ref.patches, ref.stop_reason,
                                                                           ref.rebuilds)
    body = [line for line in ours.text.splitlines() if line.startswith("[r:")]
    assert body and body[0].startswith("[r:0/" if bars is None else f"[r:0/{bars}]")
    if model == "trained":
        assert ours.rebuilds >= 1


@pytest.mark.parametrize("model", ["trained", "demo-int8-wo", "demo-fp16", "demo-int8"])
def test_every_prefix_length(models, model):
    """Prefixes of 0 to 15 characters: 16 to 1 draws, the last a Loop of one iteration; and
    every precision's graph (fp16 casts, int8 Q/DQ pairs) built into the one-call sampler."""
    backend = OrtBackend(models[model], threads=1)
    session = backend.new_session()
    hidden = session.extend(np.array([[1] * 15 + [2], [ord(c) for c in "L:1/8\n"] + [2] + [0] * 9]))
    rng = np.random.default_rng(0)
    for length in range(16):
        prefix = rng.integers(32, 127, length).tolist()
        for params in (SamplingParams(), SamplingParams(top_k=0, top_p=1.0, temperature=2.0)):
            ours = _sample(session, hidden, prefix, length, params)
            ref = _sample(_PerCharacter(session), hidden, prefix, length, params)
            assert ours == ref and len(ours) == 16 and ours[:length] == prefix


def test_rows_share_one_patch_sampler(trained_onnx):
    backend = OrtBackend(trained_onnx, threads=1)
    requests = [PieceRequest(resolve_prompt(*BACH), GenerationConfig(seed=s, max_patches=30)) for s in range(4)]
    executor = backend.executor(3)
    assert executor._pool is not None  # one-thread CPU sessions: rows run side by side on threads
    many = Engine(executor).generate(requests)
    one = Engine(OrtBackend(trained_onnx, threads=1).executor(1)).generate(requests)
    assert [p.text for p in many] == [p.text for p in one]
    assert backend.patch_sampler() is backend.patch_sampler()


def _kernels(path) -> Counter:
    """The matmul, normalisation and GELU ops of a saved optimised graph or, for the patch
    sampler, of its Loop body."""
    graph = onnx.load(str(path), load_external_data=False).graph
    loops = [n for n in graph.node if n.op_type == "Loop"]
    ops = Counter(n.op_type for n in (loops[0].attribute[0].g if loops else graph).node)
    return Counter({op: k for op, k in ops.items() if any(w in op for w in ("MatMul", "Gemm", "Norm", "Gelu", "Quant"))})


def test_the_loop_body_is_optimised_like_the_char_decoder(demo_variant, tmp_path, monkeypatch):
    """The Loop body runs the kernels ONNX Runtime makes of the char decoder alone (int8-wo:
    MatMulNBits for DequantizeLinear + MatMul), and the weights are stored once, in the outer graph."""
    built, save = [], onnx.save

    def checked_save(model, path):  # the built model, checked where its weights file is
        save(model, path)
        onnx.checker.check_model(path, full_check=True)
        built.append(model)

    monkeypatch.setattr(onnx, "save", checked_save)
    for directory in (demo_model_dir(), demo_variant("int8-wo")):
        config = model_config(read_manifest(directory))
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "patch_sampler.onnx")
        patch_sampler.session(directory / "char_decoder.onnx", config.char_num_layers, config.num_heads, options)
        assert len(built[-1].graph.initializer) > 20 and len(built[-1].graph.node[-2].attribute[0].g.initializer) < 20
        alone = ort.SessionOptions()
        alone.optimized_model_filepath = str(tmp_path / "char_decoder.onnx")
        ort.InferenceSession(str(directory / "char_decoder.onnx"), alone, providers=["CPUExecutionProvider"])
        kernels = _kernels(tmp_path / "char_decoder.onnx")
        assert _kernels(tmp_path / "patch_sampler.onnx") == kernels


def test_a_graph_that_does_not_match_its_manifest_is_refused():
    char = onnx.load(str(demo_model_dir() / "char_decoder.onnx"))
    with pytest.raises(NotaGenError, match="past inputs"):
        patch_sampler.build(char, model_config(read_manifest(demo_model_dir())).char_num_layers + 1, 3)


def test_external_data_graphs_sample_in_one_call(tmp_path):
    import torch

    from notagen_trt.config import ModelConfig
    from notagen_trt.export.model import NotaGenModel
    from notagen_trt.export.onnx_export import export_onnx

    torch.manual_seed(0)
    config = ModelConfig(hidden_size=128, patch_num_layers=1, char_num_layers=2, patch_length=16)
    export_onnx(NotaGenModel(config), tmp_path, external_data=True, parity=False)
    session = OrtBackend(tmp_path, threads=1).new_session()
    hidden = session.extend(np.full((2, 16), 65))
    for seed in range(3):
        ours = _sample(session, hidden, [], seed, SamplingParams(top_k=0, top_p=1.0))
        assert ours == _sample(_PerCharacter(session), hidden, [], seed, SamplingParams(top_k=0, top_p=1.0))

