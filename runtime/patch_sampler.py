"""One ONNX Runtime call per patch on the CPU: the char decoder and the published sampling rule
in one graph, built from whatever char decoder graph a model directory holds (fp32 or a variant).

Stepping character by character costs 16 - len(prefix) runtime calls and as many numpy draws per
patch; on a small model their fixed costs are a large part of a patch. The built graph reads

    patch_hidden [1, H] f32, tokens [1, t] i64 (bos placeholder + forced prefix),
    uniforms [n] f64 (n = 17 - t), top_k i64 (the vocabulary size for "off"), top_p f64,
    temperature f64  ->  tokens_out [n] i64

and runs the char decoder as the body of an ONNX ``Loop``: iteration 0 is the prefill over
``tokens``, each later one feeds back the previous draw, and each draws one id with its uniform
exactly as sampling.py's ``sample`` does.

The weights are initializers of the outer graph, which the body reads as outer-scope values:
ONNX Runtime holds a subgraph's own initializers about twice over. Its fusions, though
(DequantizeLinear + MatMul -> MatMulNBits, ...), only see initializers of the graph being fused,
so ``session`` lets ONNX Runtime optimise the char graph alone first and builds on the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from notagen_trt.config import HEAD_DIM, VOCAB_SIZE
from notagen_trt.errors import NotaGenError

OUTPUT = "tokens_out"
_info = helper.make_tensor_value_info
_SETTINGS = [_info("top_k", TensorProto.INT64, []), _info("top_p", TensorProto.DOUBLE, []),
             _info("temperature", TensorProto.DOUBLE, [])]


class _Nodes:
    """Appends nodes to a list; every node and value it makes is named under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes = prefix, []

    def __call__(self, op: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        name = f"{self.prefix}{op}_{len(self.nodes)}"
        outs = [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs


def _const(initializers: dict[str, TensorProto], name: str, value) -> str:
    name = f"patch_sampler/{name}"
    initializers[name] = numpy_helper.from_array(np.asarray(value), name)
    return name


def _sampler_constants(n: _Nodes, outer: dict[str, TensorProto], inner: dict[str, TensorProto]) -> dict[str, str]:
    """Names ``_sample`` uses: the settings derived once per call (nodes of ``n``, whose graph
    holds ``outer``) and constants of the graph that samples (``inner``)."""
    i64 = np.int64
    return {
        "inv_temperature": n("Div", _const(outer, "one_f64", np.float64(1.0)), "temperature"),
        "in_top_k": n("Less", _const(outer, "ids", np.arange(VOCAB_SIZE, dtype=i64)), "top_k"),
        "minus_one": _const(inner, "minus_one", i64(-1)),
        "minus_one_axes": _const(inner, "minus_one_axes", np.array([-1], i64)),
        "last": _const(inner, "last", np.array([VOCAB_SIZE - 1], i64)),
        "last_id": _const(inner, "last_id", i64(VOCAB_SIZE - 1)),
        "vocab": _const(inner, "vocab", np.array([VOCAB_SIZE], i64)),
        "zero_f64": _const(inner, "zero_f64", np.float64(0.0)),
        **{f"axes{a}": _const(inner, f"axes{a}", np.array([a], i64)) for a in range(2)},
    }


def _sample(n: _Nodes, c: dict[str, str], logits: str, u: str) -> str:
    """sampling._sample_row as ONNX nodes: logits [1, 1, 128] f32, u [] f64 -> id [1, 1] i64.

    The numpy rule's float64 values: weights exp(logit - the top logit) in rank order (tied
    leaders exactly 1.0), positions past top_k zeroed rather than dropped, running sums in rank
    order (CumSum adds left to right, as numpy's cumsum does), so a top-p cut between tied tokens
    falls where numpy puts it. The top-p mask needs no top_k term (a zero stays zero) and no
    forced first token (the mass before it is 0). What may round unlike numpy: Exp and Pow (ONNX
    Runtime's and numpy's float64 exp and pow differ by an ulp or two on some inputs); that moves
    weights by ulps, never their order or ties, so only a uniform within ulps of a cdf step (or
    a top-p cut within ulps of untied mass) can draw another id."""
    ranked, order = n("TopK", logits, c["vocab"], outputs=2, axis=-1)  # descending, ties to the lower id
    ranked = n("Cast", ranked, to=TensorProto.DOUBLE)
    ranked = n("Exp", n("Sub", ranked, n("Slice", ranked, c["axes0"], c["axes1"], c["minus_one_axes"])))
    ranked = n("Where", c["in_top_k"], ranked, c["zero_f64"])
    total = n("Gather", n("CumSum", ranked, c["minus_one"]), c["last"], axis=-1)
    before = n("CumSum", ranked, c["minus_one"], exclusive=1)  # mass ranked strictly before
    weights = n("Where", n("LessOrEqual", before, n("Mul", "top_p", total)), ranked, c["zero_f64"])
    weights = n("Pow", weights, c["inv_temperature"])
    cdf = n("CumSum", n("ScatterElements", ranked, order, weights, axis=-1), c["minus_one"])  # id order
    below = n("LessOrEqual", cdf, n("Mul", u, n("Gather", cdf, c["last"], axis=-1)))
    count = n("ReduceSum", n("Cast", below, to=TensorProto.INT64), c["minus_one_axes"], keepdims=0)
    return n("Min", count, c["last_id"])


def sampler_model() -> onnx.ModelProto:
    """The sampling rule alone, as the patch sampler runs it: (logits [1, 1, 128] f32, u [] f64,
    top_k, top_p, temperature) -> token [1, 1] i64. For checking it against ``sample``."""
    inits: dict[str, TensorProto] = {}
    n = _Nodes("patch_sampler/")
    token = _sample(n, _sampler_constants(n, inits, inits), "logits", "u")
    n.nodes.append(helper.make_node("Identity", [token], ["token"]))
    graph = helper.make_graph(
        n.nodes, "sampler", [_info("logits", TensorProto.FLOAT, [1, 1, VOCAB_SIZE]),
                             _info("u", TensorProto.DOUBLE, []), *_SETTINGS],
        [_info("token", TensorProto.INT64, [1, 1])], initializer=list(inits.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _rename(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Put every node, value and initializer name of ``graph`` under ``char/``, in place, except
    graph inputs and outputs, which ``rename`` maps: no name can meet one of the outer graph."""
    def name(value: str) -> str:
        return rename.get(value, "char/" + value) if value else value

    for i, node in enumerate(graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise NotaGenError(f"char decoder node {node.name!r} ({node.op_type}) holds a subgraph, which the "
                               "one-call patch sampler does not copy; re-export the model with this version")
        node.name = "char/" + (node.name or f"{node.op_type}_{i}")
        node.input[:] = [name(v) for v in node.input]
        node.output[:] = [name(v) for v in node.output]
    for tensor in graph.initializer:
        tensor.name = name(tensor.name)


def session(char_path: Path, layers: int, heads: int, options: ort.SessionOptions) -> ort.InferenceSession:
    """The patch sampler of the char decoder graph at ``char_path``, loaded for the CPU."""
    # Cleanup errors ignored: where ONNX Runtime maps the weights file, Windows cannot delete it yet.
    with tempfile.TemporaryDirectory(prefix="notagen-patch-sampler-", ignore_cleanup_errors=True) as tmp:
        alone = ort.SessionOptions()
        alone.log_severity_level = 3
        alone.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # the portable fusions
        alone.optimized_model_filepath = str(Path(tmp) / "char_decoder.onnx")
        # Its weights go to a file beside it, where the patch sampler built next to it reads them:
        # they never pass through Python (also when the source graph keeps its own external data).
        alone.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights")
        ort.InferenceSession(str(char_path), alone, providers=["CPUExecutionProvider"])
        path = Path(tmp) / "patch_sampler.onnx"
        onnx.save(build(onnx.load(alone.optimized_model_filepath, load_external_data=False), layers, heads), str(path))
        # Fused already: later fusions could not use the body's outer-scope weights anyway.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def build(char_model: onnx.ModelProto, layers: int, heads: int) -> onnx.ModelProto:
    """Turn a loaded char decoder model (IO as the manifest lists it: input_ids, patch_hidden,
    past..., then logits, present...) into the patch sampler, in place: its graph becomes the
    outer graph and keeps the weights, its nodes move into the Loop body (no copy of the
    weights is made). ``patch_hidden`` is read from the outer graph on every iteration (the
    char decoder ignores it after position 0)."""
    g = char_model.graph
    ids_in, hidden_in, *past_in = [v.name for v in g.input]
    logits_out, *present_out = [v.name for v in g.output]
    if len(past_in) != 2 * layers or len(present_out) != 2 * layers:
        raise NotaGenError(f"the char decoder graph has {len(past_in)} past inputs, its manifest says {2 * layers}; "
                           "re-export the model")
    kv_type = [1, heads, None, HEAD_DIM]
    hidden = g.input[1].type.tensor_type.shape.dim[-1].dim_value or None
    outer: dict[str, TensorProto] = {}
    inner: dict[str, TensorProto] = {}
    n = _Nodes("patch_sampler/")
    c = _sampler_constants(n, outer, inner)

    # Loop body: (iteration, cond, ids, past...) -> (cond, drawn id, present..., drawn id as scan output).
    state = ["patch_sampler/iteration", "patch_sampler/cond", "patch_sampler/ids",
             *[f"patch_sampler/past.{i}" for i in range(len(past_in))]]
    presents = [f"patch_sampler/present.{i}" for i in range(len(present_out))]
    rename = {ids_in: state[2], hidden_in: "patch_hidden", **dict(zip(past_in, state[3:])),
              logits_out: "patch_sampler/logits", **dict(zip(present_out, presents))}
    _rename(g, rename)
    b = _Nodes("patch_sampler/step/")
    end = _const(inner, "end", np.array([np.iinfo(np.int64).max], np.int64))
    last = b("Slice", "patch_sampler/logits", c["minus_one_axes"], end, c["axes1"])  # [1, 1, 128]
    token = _sample(b, c, last, b("Gather", "uniforms", state[0], axis=0))
    body = helper.make_graph(
        [*g.node, *b.nodes, helper.make_node("Identity", [token], ["patch_sampler/drawn"])], "patch_sampler_step",
        [_info(state[0], TensorProto.INT64, []), _info(state[1], TensorProto.BOOL, []),
         _info(state[2], TensorProto.INT64, [1, None]), *[_info(v, TensorProto.FLOAT, kv_type) for v in state[3:]]],
        [_info(state[1], TensorProto.BOOL, []), _info(token, TensorProto.INT64, [1, 1]),
         *[_info(v, TensorProto.FLOAT, kv_type) for v in presents],
         _info("patch_sampler/drawn", TensorProto.INT64, [1, 1])],
        initializer=list(inner.values()))

    # Outer graph: one iteration per uniform, from an empty past; the scan output is the patch.
    empty_past = _const(outer, "empty_past", np.zeros((1, heads, 0, HEAD_DIM), np.float32))
    loop_out = [f"patch_sampler/loop:{i}" for i in range(2 + len(presents))]
    n.nodes.append(helper.make_node("Loop", [n("Size", "uniforms"), _const(outer, "true", np.bool_(True)), "tokens",
                                             *[empty_past] * len(past_in)], loop_out, name="patch_sampler/loop",
                                    body=body))
    n.nodes.append(helper.make_node("Reshape", [loop_out[-1], _const(outer, "flat", np.array([-1], np.int64))],
                                    [OUTPUT], name="patch_sampler/output"))
    for field, values in (
            (g.node, n.nodes), (g.initializer, outer.values()), (g.value_info, []),
            (g.input, [_info("patch_hidden", TensorProto.FLOAT, [1, hidden]),
                       _info("tokens", TensorProto.INT64, [1, None]), _info("uniforms", TensorProto.DOUBLE, [None]),
                       *_SETTINGS]),
            (g.output, [_info(OUTPUT, TensorProto.INT64, [None])])):
        if field is not g.initializer:
            del field[:]
        field.extend(values)
    g.name = "patch_sampler"
    return char_model
