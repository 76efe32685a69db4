"""MMA-Diffusion's candidate scoring at real size: the pooled text embedding of a batch of candidates encoded at
the model's full length against encoded only through the end token (attacks.search.through_end).

    python scripts/bench_pooled.py [--kinds sd15,sd21] [--candidates 32] [--tokens 20] [--threads 2] [--repeats 3]

Each kind's text encoder is built from its config in the repo with random weights (models/scale.py: SD 1.5's
CLIP ViT-L/14, 12 layers, and SD 2.1's OpenCLIP ViT-H/14 as SD uses it, 23 layers) with CLIP's real tokenizer.
The candidates are MMA's layout: the start token, `--tokens` random vocabulary tokens, the end token, padding
to 77. Both ways run on the same candidates, interleaved, `--repeats` times; printed: the fastest and median
time of each, their ratio, and the largest difference between the two pooled embeddings.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="sd15,sd21")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import torch

    from igmu.attacks.search import allowed_tokens, prefix_layout, random_tokens, through_end
    from igmu.models.clip_tokenizer import clip_tokenizer
    from igmu.models.scale import scale_config, scale_text_encoder

    torch.set_num_threads(a.threads)
    print("| text encoder | candidates x tokens | full length, s (min / median) | through the end token, s "
          "(min / median) | ratio of medians | largest difference |")
    print("|---|---|---|---|---|---|")
    for kind in [k.strip() for k in a.kinds.split(",") if k.strip()]:
        c = scale_config(kind)
        torch.manual_seed(0)
        te = scale_text_encoder(c).eval()
        tok = clip_tokenizer(c["tokenizer"]["pad_token"])
        g = torch.Generator().manual_seed(0)
        allowed = allowed_tokens(tok, te.get_input_embeddings().weight.shape[0])
        ids = torch.cat([prefix_layout(tok, "", a.tokens, random_tokens(allowed, a.tokens, g))[0]
                         for _ in range(a.candidates)])
        cut = through_end(te, tok, ids)
        times = {"full": [], "cut": []}
        with torch.no_grad():
            full_out, cut_out = te(ids).pooler_output, te(cut).pooler_output  # warm-up, and the two results
            for r in range(a.repeats):
                for name in (("full", "cut") if r % 2 == 0 else ("cut", "full")):
                    x = ids if name == "full" else cut
                    t0 = time.perf_counter()
                    te(x)
                    times[name].append(time.perf_counter() - t0)
        diff = (full_out - cut_out).abs().max().item()
        f, k = times["full"], times["cut"]
        print(f"| {kind} ({sum(p.numel() for p in te.parameters()) / 1e6:.1f}M) | {a.candidates} x {ids.shape[1]} -> "
              f"{cut.shape[1]} | {min(f):.2f} / {statistics.median(f):.2f} | {min(k):.2f} / {statistics.median(k):.2f} | "
              f"{statistics.median(f) / statistics.median(k):.2f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
