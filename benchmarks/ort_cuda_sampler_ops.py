"""ONNX Runtime CUDA, one captured CUDA graph per call: what the in-graph sampler's float64 ops cost inside
a graph replay. Chains of 16 draws' worth of one op (or one alternative formulation) on [1, 128]
doubles; prints us per op per call as one JSON line."""
import json
import time

import numpy as np
import onnx.helper as h
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import numpy_helper as nh

D, I64 = T.DOUBLE, T.INT64
N = 16


def timed(nodes, inits, extra_inputs=()):
    inputs = [h.make_tensor_value_info("x", D, [1, 128]), *extra_inputs]
    g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info(nodes[-1].output[0], D, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10).SerializeToString()
    s = ort.InferenceSession(m, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    feeds = {"x": np.random.default_rng(0).random((1, 128))}
    if extra_inputs:
        feeds["order"] = np.random.default_rng(1).permutation(128)[None].astype(np.int64)
    values = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feeds.items()}
    binding = s.io_binding()
    for k, v in values.items():
        binding.bind_ortvalue_input(k, v)
    binding.bind_output(nodes[-1].output[0], "cuda")
    for _ in range(5):
        s.run_with_iobinding(binding)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        for _ in range(50):
            s.run_with_iobinding(binding)
        binding.synchronize_outputs()
        best = min(best, (time.perf_counter() - start) / 50)
    return best * 1e6


order_in = h.make_tensor_value_info("order", I64, [1, 128])
one = [nh.from_array(np.array(1e-9), "c")]
result = {"onnxruntime": ort.__version__}
result["empty_us"] = timed([h.make_node("Add", ["x", "c"], ["y"])], one)


def chain(make, inits, extra=()):
    nodes, prev = [], "x"
    for i in range(N):
        made = make(prev, i)
        nodes += made
        prev = made[-1].output[0]
    return (timed(nodes, inits, extra) - result["empty_us"]) / N


result["add"] = chain(lambda p, i: [h.make_node("Add", [p, "c"], [f"y{i}"])], one)
result["scatter_elements"] = chain(lambda p, i: [h.make_node("ScatterElements", [p, "order", p], [f"y{i}"], axis=-1)],
                                   [], [order_in])
arange = nh.from_array(np.arange(128, dtype=np.int64)[None, :, None], "ar")  # [1, 128, 1]
result["onehot_matmul"] = chain(lambda p, i: [
    h.make_node("Unsqueeze", ["order", "ax"], [f"o{i}"]),  # [1, 1, 128]: order[j] along the last axis
    h.make_node("Equal", [f"o{i}", "ar"], [f"e{i}"]),  # [1, 128, 128]: E[i, j] = order[j] == i
    h.make_node("Cast", [f"e{i}"], [f"f{i}"], to=D),
    h.make_node("Unsqueeze", [p, "ax2"], [f"r{i}"]),  # [1, 128, 1]
    h.make_node("MatMul", [f"f{i}", f"r{i}"], [f"m{i}"]),  # [1, 128, 1]
    h.make_node("Reshape", [f"m{i}", "shape"], [f"y{i}"])],
    [arange, nh.from_array(np.array([1], np.int64), "ax"), nh.from_array(np.array([-1], np.int64), "ax2"),
     nh.from_array(np.array([1, 128], np.int64), "shape")], [order_in])
k = nh.from_array(np.array([128], np.int64), "k")
result["topk"] = chain(lambda p, i: [h.make_node("TopK", [p, "k"], [f"y{i}", f"i{i}"])], [k])
result["cumsum"] = chain(lambda p, i: [h.make_node("CumSum", [p, "ax0"], [f"y{i}"])],
                         [nh.from_array(np.array(-1, np.int64), "ax0")])
result["pow"] = chain(lambda p, i: [h.make_node("Pow", [p, "c"], [f"y{i}"])], one)
print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
