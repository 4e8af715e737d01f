"""Compile _rows for an H200 (sm_90) on a machine without a GPU, to read what ptxas made of it:
registers a thread, and the instructions after the programmatic-dependent-launch wait (runs
collapsed: barriers, loads, tensor-core steps, the ticket).

Needs only Triton (the GPU machine's version: ``python3 -m venv /tmp/tv && /tmp/tv/bin/pip
install triton==3.6.0``); torch is not imported. From the repository root:
``/tmp/tv/bin/python benchmarks/chains/compile_rows.py [--file fastpath/decode_kernels.py]
[--shape qkv] [--tile 128x256x8p4] [--int8]``."""

import argparse
import importlib.util
import pathlib
import re
import subprocess
import sys
import types

# decode_kernels imports torch for its host side only; the kernel needs none of it.
sys.modules.setdefault("torch", types.SimpleNamespace(float16=None))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

# NotaGen-X's products: (inputs, outputs, LayerNorm, GELU, residual).
SHAPES = {"qkv": (1280, 3840, 1, 0, 0), "proj": (1280, 1280, 0, 0, 1), "fc1": (1280, 5120, 1, 1, 0),
          "fc2": (5120, 1280, 0, 0, 1), "lm_head": (1280, 128, 1, 0, 0)}
SHOWN = re.compile(r"HMMA|STS|LDS|LDSM|BAR|STG|LDG|MEMBAR|ATOM|ATOMG|RED|FENCE|CCTL|ERRBAR|EXIT|BRA|MUFU|SHFL|ACQBULK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="fastpath/decode_kernels.py")
    parser.add_argument("--shape", choices=SHAPES, default="qkv")
    parser.add_argument("--tile", default="128x256x8p4", help="BLOCK_N x BLOCK_K x warps p PARTS")
    parser.add_argument("--int8", action="store_true")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("kernels", args.file)
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    k, n, ln, gelu, residual = SHAPES[args.shape]
    (block_n, block_k, warps), parts = map(int, args.tile.split("p")[0].split("x")), int(args.tile.split("p")[1])
    # The residual stream (float32) feeds the LayerNorms; the other products take fp16 activations.
    types_ = {"x_ptr": "*fp32" if ln else "*fp16", "w_ptr": "*i8" if args.int8 else "*fp16",
              "scale_ptr": "*fp16", "bias_ptr": "*fp16", "lnw_ptr": "*fp16", "c1_ptr": "*fp32",
              "out_ptr": "*fp32" if residual or args.shape == "lm_head" else "*fp16", "part_ptr": "*fp32", "stats_ptr": "*fp32",
              "count_ptr": "*i32", "M": "i32", "N": "i32", "stride_x": "i32", "stride_out": "i32", "eps": "fp32"}
    constants = dict(K=k, LN=ln, GELU=gelu, RESIDUAL=residual, HAS_BIAS=1, W_INT8=int(args.int8), BLOCK_N=block_n,
                     BLOCK_K=min(block_k, triton.next_power_of_2(k)), BLOCK_M=16, PARTS=parts, USE_PDL=1)
    names = list(kernels._rows.arg_names)
    signature = {name: types_.get(name, "constexpr") for name in names}
    aligned = {(names.index(name),): [["tt.divisibility", 16]] for name in names
               if signature[name].startswith("*") or name in ("N", "stride_x", "stride_out")}
    source = ASTSource(fn=kernels._rows, signature=signature,
                       constexprs={(names.index(name),): value for name, value in constants.items()}, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "launch_pdl": True})
    cubin = pathlib.Path("/tmp") / f"rows_{args.shape}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    tool = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    usage = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True).stdout
    ops: list[list] = []
    for op in re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z0-9_]+)", sass.split("ACQBULK", 1)[-1]):
        if SHOWN.fullmatch(op):
            if ops and ops[-1][0] == op:
                ops[-1][1] += 1
            else:
                ops.append([op, 1])
    registers = re.search(r"REG:(\d+)", usage).group(1)
    print(f"{args.file} {args.shape} {args.tile}{' int8' if args.int8 else ''}: registers {registers}, "
          f"shared memory {compiled.metadata.shared} bytes")
    print("after the wait:", " ".join(f"{op}:{count}" for op, count in [["ACQBULK", 1], *ops]))


if __name__ == "__main__":
    main()
