"""Worker of test_ddp.py: ``torchrun --standalone --nproc-per-node 2 ddp_worker.py OUT [EPOCHS]``.

Runs the same run_pretrain call as the single-process reference of the test; every
process passes the same runs, run_pretrain joins the gloo group from torchrun's env.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_helpers import atlas_kwargs, ddp_options, synthetic_runs  # noqa: E402

from bids_semantoks.pretrain import run_pretrain  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    run_pretrain(ddp_options(epochs), synthetic_runs(16), out, **atlas_kwargs())
    torch.distributed.destroy_process_group()
