"""Time 16-row patches (NotaGen-X shape, fp16, the patch's CUDA graphs, median of replays) with
_rows on other tiles, warps and parts counts; check each one's products against the first.
python benchmarks/chains/time_variants.py [128x256x8p4/64x512x8 64x512x8p4 ...] (from the repository root, on a CUDA GPU)."""
import importlib.util
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
    lin_class = decode_kernels.PackedLinear
    base = (lin_class.ROWS_TILES, lin_class.ROWS_PARTS, lin_class.ROWS_TILES_LONG, None)
    shipped = "x".join(map(str, base[0])) + f"p{base[1]}"
    if base[2] != base[0]:
        shipped += "/" + "x".join(map(str, base[2]))
    # A variant: BLOCK_N x BLOCK_K x warps p PARTS, for every layer, or "A/B": tile A for inputs up
    # to PackedLinear.LONG and tile B (BLOCK_N x BLOCK_K x warps) for longer ones (NotaGen's MLP
    # output projection); "...@file.py" runs that file's _rows (another form of the kernel, the
    # same arguments). By default the shipped tiles, the one tile before them, and 128 x 256 for all.
    specs = sys.argv[1:] or [shipped, "64x512x8p4", "128x256x8p4"]
    configs = []  # (spec, tiles, parts, long-input tiles, kernel file)
    for spec in specs:
        tiles, _, kernel = spec.partition("@")
        short, _, long_tiles = tiles.partition("/")
        short_tiles, parts = tuple(int(v) for v in short.split("p")[0].split("x")), int(short.split("p")[1])
        long_tiles = tuple(int(v) for v in long_tiles.split("p")[0].split("x")) if long_tiles else short_tiles
        configs.append((spec, short_tiles, parts, long_tiles, kernel or None))
    out = {"gpu": torch.cuda.get_device_name(), "shipped": shipped}
    kernels = {None: decode_kernels._rows}  # each file's _rows, loaded once (its compiled kernels kept)

    def use(tiles, parts, long_tiles, kernel):
        lin_class.ROWS_TILES, lin_class.ROWS_PARTS, lin_class.ROWS_TILES_LONG = tiles, parts, long_tiles
        if kernel not in kernels:
            spec = importlib.util.spec_from_file_location(pathlib.Path(kernel).stem, kernel)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            kernels[kernel] = module._rows
        decode_kernels._rows = kernels[kernel]

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
            for name, *variant in configs:
                use(*variant)
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
    use(*base)
    fast = FastBackend(NotaGenModel(PRESETS["x"]), "cuda", "fp16")
    ex = fast.executor(1)
    out["base rows=1"] = graph_ms(ex, reps=100)
    ex.close()
    for round_ in range(2):
        for name, *variant in configs:
            use(*variant)
            _new_workspace(fast)  # sized for this tile's splits and column blocks
            t = time.time()
            ex = fast.executor(16)
            made = time.time() - t
            out[f"{name} rows=16 r{round_}"] = graph_ms(ex, reps=100)
            ex.close()
            print(name, round_, out[f"{name} rows=16 r{round_}"], f"(made in {made:.0f} s)", flush=True)
    use(*base)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
