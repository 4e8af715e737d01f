"""Time 16-row patches (NotaGen-X shape, fp16, the patch's CUDA graphs, median of replays) with
_rows on other tiles, warps and parts counts; check each one's products against the first.
python benchmarks/chains/time_variants.py [64x512x8p4 128x512x8p4 ...] (from the repository root, on a CUDA GPU)."""
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))
from inflight_breakdown import _new_workspace, graph_ms  # noqa: E402

from notagen_trt.config import PRESETS  # noqa: E402
from notagen_trt.export.model import NotaGenModel  # noqa: E402
from notagen_trt.fastpath import decode_kernels  # noqa: E402
from notagen_trt.fastpath.executor import FastBackend  # noqa: E402


def main():
    torch.manual_seed(0)
    base_tiles = decode_kernels.PackedLinear.ROWS_TILES
    base_parts = decode_kernels.PackedLinear.ROWS_PARTS
    shipped = "x".join(map(str, base_tiles)) + f"p{base_parts}"
    # Tiles as BLOCK_N x BLOCK_K x warps p PARTS. By default the shipped one, the kernel before
    # parts (one part, 4 warps; the 2026-12-03 lease timed that commit's own file, 51da1d8, as
    # "head w4") and eight parts.
    specs = sys.argv[1:] or [shipped, "64x512x4p1", "64x512x8p8"]
    configs = [(spec, tuple(int(v) for v in spec.split("p")[0].split("x")), int(spec.split("p")[1])) for spec in specs]
    out = {"gpu": torch.cuda.get_device_name(), "shipped": shipped}

    def use(tiles, parts=base_parts):
        decode_kernels.PackedLinear.ROWS_TILES = tiles
        decode_kernels.PackedLinear.ROWS_PARTS = parts

    # Products: each variant against the shipped kernel (fp16 tolerance) and against itself (bits).
    ln = torch.nn.LayerNorm(1280).cuda()
    ln.weight.data.normal_(1.0, 0.1)
    ln.bias.data.normal_(0.0, 0.1)
    shapes = {"qkv+ln": (1280, 3840), "fc2+res": (5120, 1280)}
    for int8 in (False, True):
        for sname, (k, n) in shapes.items():
            w, b = torch.randn(k, n) * 0.05, torch.randn(n) * 0.1
            x = torch.randn(16, k, device="cuda") * 3 + 0.5
            res0 = torch.randn(16, n, device="cuda")
            ref = None
            for name, tiles, parts in configs:
                use(tiles, parts)
                lin = decode_kernels.PackedLinear(w, b, int8=int8).to("cuda")
                if sname == "qkv+ln":
                    got = [lin(x, ln=ln, out_dtype=torch.float32) for _ in range(2)]
                else:
                    got = []
                    for _ in range(2):
                        r = res0.clone()
                        lin(x.half(), residual=r)
                        got.append(r)
                same = bool(torch.equal(got[0], got[1]))
                if ref is None:
                    ref = got[0]
                err = (got[0] - ref).abs().max().item()
                out[f"check {sname} int8={int8} {name}"] = {"max_diff_vs_base": err, "repeat_same_bits": same}
    print(json.dumps({k: v for k, v in out.items() if k.startswith("check")}, indent=0), flush=True)
    use(base_tiles)
    fast = FastBackend(NotaGenModel(PRESETS["x"]), "cuda", "fp16")
    ex = fast.executor(1)
    out["base rows=1"] = graph_ms(ex, reps=100)
    ex.close()
    for round_ in range(2):
        for name, tiles, parts in configs:
            use(tiles, parts)
            _new_workspace(fast)  # sized for this tile's splits and column blocks
            t = time.time()
            ex = fast.executor(16)
            made = time.time() - t
            out[f"{name} rows=16 r{round_}"] = graph_ms(ex, reps=100)
            ex.close()
            print(name, round_, out[f"{name} rows=16 r{round_}"], f"(made in {made:.0f} s)", flush=True)
    use(base_tiles)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
