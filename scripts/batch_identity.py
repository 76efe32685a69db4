"""Is an image independent of the batch it is generated in? Measures what holds on this machine.

    python scripts/batch_identity.py [--n 8] [--model mini]

Generates n images of one prompt (seeds 0..n-1, default settings) at batch size 1, at batch size n, and at batch
size n again, and at batch size n with other prompts beside it (other positions, other batch-mates), and prints how many images differ and by how much. The initial noise of
an image depends only on its seed; what can differ is float rounding in batched kernels. docs/design.md quotes
the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _diff(a, b) -> dict:
    import numpy as np

    d = np.abs(a.astype(int) - b.astype(int))
    per = [int((x > 0).any()) for x in d]
    return {"images_differing": sum(per), "max_level_difference": int(d.max()),
            "share_of_values_differing": round(float((d > 0).mean()), 6)}


def main(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--prompt", default="a red striped circle on a dark background")
    a = ap.parse_args(argv)
    import torch

    from igmu.generate import GenSettings, generate_images
    from igmu.models.load import load_pipeline

    pipe = load_pipeline(a.model)
    s = GenSettings()
    seeds = list(range(a.n))
    one = generate_images(pipe, [a.prompt] * a.n, seeds, s, batch_size=1)
    full = generate_images(pipe, [a.prompt] * a.n, seeds, s, batch_size=a.n)
    again = generate_images(pipe, [a.prompt] * a.n, seeds, s, batch_size=a.n)
    others = ["a blue square on a light background", "a zorb on a light background"]
    mixed = generate_images(pipe, [a.prompt if i % 2 == 0 else others[i % 4 // 2] for i in range(2 * a.n)],
                            [seeds[i // 2] for i in range(2 * a.n)], s, batch_size=a.n)[::2]
    res = {"model": a.model, "images": a.n, "steps": s.steps, "guidance": s.guidance,
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           f"batch 1 vs batch {a.n}": _diff(one, full),
           f"batch {a.n} vs batch {a.n} again": _diff(full, again),
           f"batch {a.n} vs batch {a.n} with other prompts beside": _diff(full, mixed)}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
