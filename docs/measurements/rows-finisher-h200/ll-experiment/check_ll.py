# ruff: noqa  (an experiment's scripts, kept as they ran)
import os
import sys
os.environ["TRITON_INTERPRET"] = "1"
import importlib.util
import pathlib
import torch
from notagen_trt.fastpath import decode_kernels as dk
spec = importlib.util.spec_from_file_location("dk_ll", pathlib.Path(__file__).with_name("dk_ll.py"))
ll = importlib.util.module_from_spec(spec); spec.loader.exec_module(ll)
torch.manual_seed(0)
def run(mod, w, b, x, lnm, gelu, res, int8):
    lin = mod.PackedLinear(w, b, int8=int8)
    if res is not None:
        r = res.clone(); lin(x, ln=lnm, gelu=gelu, residual=r); return r
    out = torch.empty(x.shape[0], w.shape[1]); lin(x, ln=lnm, gelu=gelu, out=out); return out
bad = 0
for k, n, rows, ln, gelu, resid, int8 in [(1280, 3840, 16, True, False, False, False), (5120, 1280, 16, False, False, True, False),
                                          (1280, 1280, 3, False, False, True, True), (1280, 5120, 16, True, True, False, False),
                                          (1280, 128, 5, True, False, False, False), (192, 576, 16, True, False, False, False)]:
    w = torch.randn(k, n) * 0.05; b = torch.randn(n) * 0.1
    x = torch.randn(rows, k) * 2 + 1
    lnm = None
    if ln:
        lnm = torch.nn.LayerNorm(k); lnm.weight.data = torch.rand(k) + .5; lnm.bias.data = torch.randn(k) * .1
    res = torch.randn(rows, n) if resid else None
    a = run(dk, w, b, x, lnm, gelu, res, int8); c = run(ll, w, b, x, lnm, gelu, res, int8)
    # twice: the flags must have been cleared by the first call
    c2 = run(ll, w, b, x, lnm, gelu, res, int8)
    same = torch.equal(a, c) and torch.equal(c, c2)
    print(k, n, rows, ln, gelu, resid, int8, "bit-equal" if same else f"DIFF {(a - c).abs().max().item()}")
    bad += not same
sys.exit(bad)
