# Sourced by the GPU benchmarks: x_checkpoint PATH writes a random-weight NotaGen-X checkpoint
# (seed 0) at PATH unless one is there.
x_checkpoint() {
  [ -e "$1" ] || python3 -c "
import torch, sys
from notagen_trt.config import PRESETS
from notagen_trt.export.model import NotaGenModel
torch.manual_seed(0)
torch.save({'model': NotaGenModel(PRESETS['x']).state_dict()}, sys.argv[1])" "$1"
}
