"""Edits under a memory budget: does `--max-memory` bound an edit sweep's resident set?

    python benchmarks/bench_edit_memory.py [2.5 4.5 8.5 free]

The 25M-parameter U-Net at 64x64 of tests/test_devices.py (random weights), a 10-step trajectory through t = 499, and
16 edit rows (guidance, 4 iterations, then DDIM to 0) in one call of editing.edit_images, once per budget: what the
process holds before it, plus SLACK, plus the given number of rows at editing.edit_row_bytes each ("free": no
budget, all 16 rows in one batch). Prints the rows edit_rows_at_once lets through at once and the peak resident set
(VmHWM, reset before each run), one JSON line per budget. Linux only (/proc).
"""
import json
import sys
import time

import torch
from diffusers import UNet2DModel

from latentbasis.devices import memory_in_use
from latentbasis.editing import EditSettings, edit_images, edit_row_bytes, edit_rows_at_once
from latentbasis.families import UNetModel
from latentbasis.jacobian import SLACK
from latentbasis.sampling import sample_trajectory


def peak() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(64, 128, 256, 256),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
                       ).eval().requires_grad_(False)
    m = UNetModel(unet, {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                         "beta_end": 0.02}, name="mid", model_hash="mid")
    ts = 499
    traj = sample_trajectory(m, 0, num_steps=10, through=[ts])
    d = torch.randn(16, *m.x_shape, generator=torch.Generator().manual_seed(1))
    settings = EditSettings("guidance", n_iter=4)
    edit_images(m, traj, ts, d[:1], settings)          # what a first edit allocates for good
    per_row = edit_row_bytes(m, traj.at(ts), ts, None, 1.0)
    for arg in sys.argv[1:] or ["2.5", "4.5", "8.5", "free"]:
        base = memory_in_use(torch.device("cpu"))
        m.max_memory = None if arg == "free" else base + SLACK + int(float(arg) * per_row)
        rows = edit_rows_at_once(m, traj.at(ts), ts, None, 1.0, len(d))
        reset_peak()
        start = time.time()
        edit_images(m, traj, ts, d, settings)
        print(json.dumps({"budget in rows": arg, "rows at once": rows, "held before (MiB)": base >> 20,
                          "budget (MiB)": None if m.max_memory is None else m.max_memory >> 20,
                          "estimate per row (MiB)": round(per_row / 2**20, 1), "peak (MiB)": peak() >> 20,
                          "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
