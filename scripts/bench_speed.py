"""Speed: 64 images from the mini model at default settings on this machine's CPU.

Prints pipeline load time, then the wall time of generating 64 images
(default steps, guidance and batch size) for three repeats, and the median.
Also checks determinism: the repeats must be bitwise identical.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main():
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    from igmu.generate import GenSettings, generate_images
    from igmu.models.load import load_pipeline
    from igmu.world.captions import canonical
    from igmu.world.scenes import sample_scene

    t = time.perf_counter()
    pipe = load_pipeline("mini")
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    prompts = [canonical(sample_scene(rng)) for _ in range(64)]
    s = GenSettings()
    times, outs = [], []
    for _ in range(3):
        t = time.perf_counter()
        outs.append(generate_images(pipe, prompts, list(range(64)), s))
        times.append(time.perf_counter() - t)
    same = all(np.array_equal(outs[0], o) for o in outs[1:])
    res = {"images": 64, "steps": s.steps, "guidance": s.guidance, "load_s": round(load_s, 2),
           "runs_s": [round(x, 2) for x in times], "median_s": round(statistics.median(times), 2),
           "bitwise_identical_repeats": same, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine()}
    print(json.dumps(res, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
