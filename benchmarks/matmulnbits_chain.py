"""What one int8 product of the demo model's char decoder costs ONNX Runtime on this CPU, apart
from the rest of a patch: a graph of 32 products in a chain, alternating the MLP's two shapes
(192 -> 768, 768 -> 192, weights shared so they stay in cache as a patch's do), one intra-op
thread, each form timed in interleaved rounds (median us per product). Forms: fp32 MatMul,
MatMulNBits 8 / 4 bits with blocks of 32 / 64 / 256 and accuracy levels 0 and 2-4, and
DynamicQuantizeMatMul (int8 per column, the dynamic-quantization kernel).

``python benchmarks/matmulnbits_chain.py [--rounds 25]``"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HIDDEN, CHAIN = 192, 32


def nbits(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' packing of w [K, N]: symmetric blocks along K (padded), offset by 2**(bits-1)."""
    k, n = w.shape
    padded = np.zeros((-(-k // block) * block, n), np.float32)
    padded[:k] = w
    blocks = padded.T.reshape(n, -1, block)
    top = 2 ** (bits - 1) - 1
    scale = np.abs(blocks).max(-1) / top + 1e-12
    q = (np.clip(np.round(blocks / scale[..., None]), -top - 1, top) + 2 ** (bits - 1)).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scale.astype(np.float32).reshape(-1)


def chain(form: tuple, weights: list[np.ndarray]) -> ort.InferenceSession:
    kind = form[0]
    inits, nodes = [], []
    for j, w in enumerate(weights):
        if kind == "nbits":
            q, s = nbits(w, form[1], form[2])
            inits += [numpy_helper.from_array(q, f"q{j}"), numpy_helper.from_array(s, f"s{j}")]
        elif kind == "dynamic":
            s = (np.abs(w).max(0) / 127).astype(np.float32)
            inits += [numpy_helper.from_array(np.clip(np.round(w / s), -127, 127).astype(np.int8), f"q{j}"),
                      numpy_helper.from_array(s, f"s{j}")]
        else:
            inits.append(numpy_helper.from_array(w, f"w{j}"))
    x = "x"
    for i in range(CHAIN):
        j, (k, n) = i % 2, weights[i % 2].shape
        if kind == "nbits":
            nodes.append(helper.make_node("MatMulNBits", [x, f"q{j}", f"s{j}"], [f"y{i}"], domain="com.microsoft", K=k,
                                          N=n, bits=form[1], block_size=form[2], accuracy_level=form[3]))
        elif kind == "dynamic":
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [x, f"q{j}", f"s{j}"], [f"y{i}"], domain="com.microsoft"))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"w{j}"], [f"y{i}"]))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HIDDEN])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((HIDDEN, 4 * HIDDEN)).astype(np.float32) * 0.05,
               rng.standard_normal((4 * HIDDEN, HIDDEN)).astype(np.float32) * 0.05]
    forms = {"fp32 MatMul": ("fp32",), "MatMulNBits 8 bits, blocks of 64, level 4 (shipped)": ("nbits", 8, 64, 4),
             "MatMulNBits 8 bits, blocks of 256, level 4": ("nbits", 8, 256, 4),
             "MatMulNBits 8 bits, blocks of 32, level 4": ("nbits", 8, 32, 4),
             "MatMulNBits 4 bits, blocks of 64, level 4": ("nbits", 4, 64, 4),
             "MatMulNBits 8 bits, blocks of 64, level 0": ("nbits", 8, 64, 0),
             "MatMulNBits 8 bits, blocks of 64, level 2": ("nbits", 8, 64, 2),
             "DynamicQuantizeMatMul": ("dynamic",)}
    sessions = {name: chain(form, weights) for name, form in forms.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            feed = {"x": rng.standard_normal((1, 1, HIDDEN)).astype(np.float32) * 0.1}
            start = time.perf_counter()
            for _ in range(10):
                session.run(None, feed)
            times[name].append((time.perf_counter() - start) / 10 / CHAIN * 1e6)
    for name, values in times.items():
        print(f"{name:52s} {statistics.median(values):8.2f} us a product (min {min(values):.2f})")


if __name__ == "__main__":
    main()
