"""ONNX Runtime CUDA's process GPU memory floor, and whether two sessions can share one weight
through SessionOptions.add_initializer with user-owned device memory (DLPack from PyTorch here,
for the measurement only). Prints one JSON line."""
import json
import os
import subprocess

import numpy as np
import onnx.helper as h
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import numpy_helper as nh


def used() -> int:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return sum(int(line.split(",")[1]) for line in out.strip().splitlines() if int(line.split(",")[0]) == os.getpid())


def model(nodes, inputs, outputs, inits=()):
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10).SerializeToString()


providers = [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]
x16 = lambda n: h.make_tensor_value_info(n, T.FLOAT16, [1, 8192])  # noqa: E731
add = model([h.make_node("Add", ["x", "x"], ["y"])], [x16("x")], [x16("y")])
ort.InferenceSession(add, providers=providers).run(None, {"x": np.ones((1, 8192), np.float16)})
result = {"onnxruntime": ort.__version__, "one_add_node_session_mb": used()}
W = (np.random.default_rng(0).standard_normal((8192, 8192)) * 0.01).astype(np.float16)  # 128 MiB
mm = model([h.make_node("MatMul", ["x", "W"], ["y"])], [x16("x")], [x16("y")], [nh.from_array(W, "W")])
x = np.random.default_rng(1).standard_normal((1, 8192)).astype(np.float16)
base = used()
import torch  # noqa: E402

t = torch.from_numpy(W).cuda()
try:
    value = ort.OrtValue.from_dlpack(t.__dlpack__())
    options = ort.SessionOptions()
    options.add_initializer("W", value)
    a, b = (ort.InferenceSession(mm, options, providers=providers) for _ in range(2))
    ya = a.run(None, {"x": x})[0]
    b.run(None, {"x": x})
    result["two_sessions_sharing_mb"] = used() - base
except Exception as exc:  # noqa: BLE001 (the experiment reports whatever ONNX Runtime says)
    result["sharing_error"] = str(exc)[:300]
    ya = None
mark = used()
c, d = (ort.InferenceSession(mm, providers=providers) for _ in range(2))
yc = c.run(None, {"x": x})[0]
d.run(None, {"x": x})
result["two_sessions_own_copies_mb"] = used() - mark
result["same_output"] = None if ya is None else bool(np.array_equal(ya, yc))
print(json.dumps(result))
