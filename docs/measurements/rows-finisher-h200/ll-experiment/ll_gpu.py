# ruff: noqa  (an experiment's scripts, kept as they ran)
import importlib.util
import json
import pathlib
import sys
import torch
sys.path.insert(0, "benchmarks")  # run from the repository root
from inflight_breakdown import graph_ms, inflight
from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.fastpath import decode_kernels as dk
from notagen_trt.fastpath.executor import FastBackend
spec = importlib.util.spec_from_file_location("dk_ll", pathlib.Path(__file__).with_name("dk_ll.py"))
ll = importlib.util.module_from_spec(spec); spec.loader.exec_module(ll)

# 1. bits: each shape, base vs LL, 200 calls each (a flag left set would show as a wrong sum)
torch.manual_seed(0)
bad = 0
for k, n, rows, ln, gelu, resid, int8 in [(1280, 3840, 16, True, False, False, False), (5120, 1280, 16, False, False, True, False),
                                          (1280, 1280, 3, False, False, True, True), (1280, 5120, 16, True, True, False, False),
                                          (1280, 128, 5, True, False, False, False)]:
    w = torch.randn(k, n) * 0.05; b = torch.randn(n) * 0.1
    lnm = None
    if ln:
        lnm = torch.nn.LayerNorm(k).cuda(); lnm.weight.data = torch.rand(k, device="cuda") + .5
    outs = {}
    for name, mod in (("base", dk), ("ll", ll)):
        lin = mod.PackedLinear(w, b, int8=int8).to("cuda")
        res = []
        for i in range(200):
            g = torch.Generator().manual_seed(i)
            x = (torch.randn(rows, k, generator=g) * 2 + 1).cuda()
            r = torch.randn(rows, n, generator=g).cuda()
            if resid:
                lin(x, ln=lnm, gelu=gelu, residual=r); res.append(r)
            else:
                o = torch.empty(rows, n, device="cuda"); lin(x, ln=lnm, gelu=gelu, out=o); res.append(o)
        outs[name] = torch.stack(res)
    same = torch.equal(outs["base"], outs["ll"])
    print(k, n, rows, "bit-equal x200" if same else "DIFF", flush=True); bad += not same

torch.manual_seed(0)
fast = FastBackend(NotaGenModel(PRESETS["x"]).eval(), "cuda", "fp16")
base_rows, base_ws = dk._rows, next(iter(fast.packed.values())).workspace
ll_ws = ll.RowsWorkspace(list(fast.packed.values()), "cuda")
def use(name):
    dk._rows = base_rows if name == "base" else ll._rows
    for p in fast.packed.values():
        p.workspace = base_ws if name == "base" else ll_ws
out = {}
# 2. graph-replay bits: same inputs, same tokens and hidden
for r in range(2):
    for name in ("base", "ll"):
        use(name); ex = fast.executor(16); out[f"graph {name} r{r}"] = graph_ms(ex); ex.close()
print(json.dumps(out, indent=1), flush=True)
# 3. pieces: 16 rows, base vs LL
from notagen_trt.runtime.engine import Engine, PieceRequest
from notagen_trt.runtime.piece import GenerationConfig
texts = {}
for name in ("base", "ll"):
    use(name)
    with Engine(fast.executor(16)) as engine:
        texts[name] = [p.text for p in engine.generate([PieceRequest(None, GenerationConfig(seed=i, max_patches=60)) for i in range(24)])]
print("pieces equal:", texts["base"] == texts["ll"], flush=True); bad += texts["base"] != texts["ll"]
# 4. in flight
for name in ("ll", "base", "ll"):
    use(name); res = inflight(fast, 16, 64); print(name, json.dumps(res), flush=True)
use("base")
res = inflight(fast, 1, 64); print("base", json.dumps(res), flush=True)
sys.exit(bad)
