"""Judges: per-head accuracy of the mini detector and caption top-1 of the mini CLIP,
on freshly rendered scenes (a seed never used for training data)."""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main():
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np

    from igmu.world.captions import canonical
    from igmu.world.judges import Detector, MiniCLIP, caption_retrieval_accuracy, head_accuracy
    from igmu.world.render import render
    from igmu.world.scenes import labels, sample_scene

    rng = np.random.default_rng(2024_11)
    scenes = [sample_scene(rng) for _ in range(4000)]
    imgs = np.stack([render(s) for s in scenes])
    acc = head_accuracy(Detector.load().predict(imgs), [labels(s) for s in scenes])
    top1, ncand = caption_retrieval_accuracy(MiniCLIP.load(), imgs, [canonical(s) for s in scenes])
    res = {"images": len(scenes), "detector_head_accuracy": acc, "clip_caption_top1": top1,
           "clip_candidates": ncand}
    print(json.dumps(res, indent=1))
    print("| head | accuracy |\n|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {v:.2%} |")
    print(f"| mini CLIP caption top-1 (among {ncand}) | {top1:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
