"""How much can batching buy? Seconds per denoiser row (one latent, one conditioning) against batch size.

ESD's x_t trajectories come from the frozen model, so igmu draws them many at a time (diffusion.sampling.
PartialTrajectories); the official esd_sd.py draws one at a time, with classifier-free guidance (2 rows a
call). Neither computes a row the other does not (igmu's e_c / e_0 reuse saves 2 of about 54 rows an
iteration), so the per-iteration speedup batching can give is bounded by

    ceiling = (rows_traj * s(2) + rows_train) / (rows_traj * s(W) + rows_train)

with s(B) the seconds per row at batch B, W = 2 x xt_batch, rows_traj = 2 x (mean stop + 1) guided rows of
the trajectory and rows_train the trained model's forward and backward at batch 1 (about 3 forward rows,
counted at s(1) on both sides). This script measures s(B) on the chosen model and threads (min over
--repeats calls, interleaved over batch sizes) and prints that ceiling for ESD's defaults (50 sampler steps,
stops uniform on 0..49: mean 24.5).

    python scripts/bench_rows.py [--model mini] [--threads 1] [--batches 1,2,4,8,16,32,64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--xt-batch", type=int, default=32, help="ESD's xt_batch (W = 2 x this rows a call)")
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "rows.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from igmu.diffusion.arch import adapter_for
    from igmu.models.load import load_pipeline
    from igmu.utils.io import atomic_path

    a = adapter_for(load_pipeline(args.model))
    model = a.denoiser.eval()
    batches = sorted({int(b) for b in args.batches.split(",")} | {1, 2, 2 * args.xt_batch})
    cond = a.encode(["a photo"])[0]
    t = a.sampling_scheduler()
    a.set_timesteps(t, 50, tuple(a.latent_shape(1)[-2:]))
    step = t.timesteps[25]
    best = {b: float("inf") for b in batches}
    with torch.no_grad():
        for b in batches:  # warm-up
            a.denoise(model, torch.randn(a.latent_shape(b)), step, cond.expand(b, -1, -1))
        for _ in range(args.repeats):
            for b in batches:
                x = torch.randn(a.latent_shape(b))
                t0 = time.perf_counter()
                a.denoise(model, x, step, cond.expand(b, -1, -1))
                best[b] = min(best[b], (time.perf_counter() - t0) / b)
    rows_traj, rows_train, W = 2 * (24.5 + 1), 3, 2 * args.xt_batch
    ceiling = (rows_traj * best[2] + rows_train * best[1]) / (rows_traj * best[W] + rows_train * best[1])
    print(f"model {args.model}, {args.threads} thread(s): ms per denoiser row (min of {args.repeats})")
    print("| batch | ms per row | rows/s | vs batch 2 |\n|---|---|---|---|")
    for b in batches:
        print(f"| {b} | {1e3 * best[b]:.2f} | {1 / best[b]:.0f} | {best[2] / best[b]:.2f}x |")
    print(f"ESD per-iteration ceiling from batching (W = {W} rows): {ceiling:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps({"model": args.model, "threads": args.threads, "seconds_per_row": best,
                                   "esd_ceiling": ceiling, "W": W}, indent=1))


if __name__ == "__main__":
    main()
