# ruff: noqa  (an experiment's scripts, kept as they ran)
"""Write dk_ll.py beside this script: decode_kernels with _rows' split branch replaced by the LL handshake."""
import pathlib
here = pathlib.Path(__file__).parent
src = (here.parents[3] / "fastpath/decode_kernels.py").read_text()
start = src.index("    else:\n        tile = rm[:, None] * N + rn[None, :]")
end = src.index("\n\n\n@triton.jit\ndef _decode_attention")
out = src[:start] + (here / "ll_branch.txt").read_text().rstrip("\n") + src[end:]
out = out.replace("        self.partials = torch.empty(parts, dtype=torch.float32, device=device)\n        self.stats = torch.empty(stats, dtype=torch.float32, device=device)",
                  "        self.partials = torch.zeros(parts, dtype=torch.int64, device=device)\n        self.stats = torch.zeros(stats, dtype=torch.int64, device=device)")
assert "torch.int64, device=device)" in out
(here / "dk_ll.py").write_text(out)
