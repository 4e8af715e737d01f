# ruff: noqa  (an experiment's script, kept as it ran but for the path below; on a GPU, from the repository root: python3 docs/measurements/rows-finisher-h200/ticket-experiment/ticket_variants.py)
"""Experiment: cheaper split-K tickets for _rows (16 rows, NotaGen-X fp16, random weights)."""
import importlib.util, json, pathlib, sys, tempfile
import torch
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[4] / "benchmarks"))  # for inflight_breakdown (it ran from benchmarks/_tmp)
from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
from notagen_trt.fastpath import decode_kernels
from notagen_trt.fastpath.executor import FastBackend
from inflight_breakdown import graph_ms

SPREAD = 32
def variants(folder):
    src = pathlib.Path(decode_kernels.__file__).read_text()
    texts = {
        "spread": src.replace("count_ptr + pid_n", f"count_ptr + pid_n * {SPREAD}"),
        "release": src.replace('sem="acq_rel"', 'sem="release"'),
        "spread_release": src.replace("count_ptr + pid_n", f"count_ptr + pid_n * {SPREAD}").replace('sem="acq_rel"', 'sem="release"'),
    }
    mods = {}
    for name, text in texts.items():
        assert text != src, name
        path = folder / f"rows_{name}.py"; path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"rows_{name}", path)
        mods[name] = importlib.util.module_from_spec(spec); spec.loader.exec_module(mods[name])
    return mods

def main():
    torch.manual_seed(0)
    fast = FastBackend(NotaGenModel(PRESETS["x"]), "cuda", "fp16")
    ws = next(iter(fast.packed.values())).workspace
    ws.tickets = torch.zeros(ws.tickets.numel() * SPREAD, dtype=torch.int32, device="cuda")
    base, out = decode_kernels._rows, {}
    with tempfile.TemporaryDirectory() as folder:
        mods = variants(pathlib.Path(folder))
        # reference tokens with the shipped kernel, to check the variants' outputs
        for rnd in range(2):
            for name, mod in [("base", None), *mods.items()]:
                decode_kernels._rows = base if mod is None else mod._rows
                ex = fast.executor(16)
                for g in ex._graphs:
                    g.replay()
                torch.cuda.synchronize()
                got = (ex.tokens.clone(), ex.hidden_next.clone())
                if name == "base":
                    ref = got
                out[f"{name} r{rnd} equal"] = bool(torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]))
                out[f"{name} r{rnd}"] = graph_ms(ex, reps=100)
                ex.close()
    decode_kernels._rows = base
    print(json.dumps(out, indent=1))

if __name__ == "__main__":
    main()
