"""Which text-encoder token rows the mini model's UNet reads a concept from, and what that means for UCE's
`token_rows=last` and for CURE (the two null results of docs/methods.md and docs/calibration.md).

Three measurements on the shipped mini model, for the target prompts of a mini task (default
tasks/mini/object-circle.yaml, its `forget.explicit` prompts, which name the target word), each prompt
against its `stripped` twin (the same prompt with the anchor in the target's place):

1. Token rows (hypothesis A). The text encoder's rows of each prompt are put in five categories: the start
   token (BOS), the other word tokens, the concept's word token(s) (the target's tokens inside the prompt),
   the end-of-text token (EOS, the first one) and the padding (every later row; the mini tokenizer pads with
   the EOS token). Per category: how many rows a prompt has; the mean share of cross-attention probability
   the rows receive, recorded with igmu.diffusion.attention.record_cross_attention while sampling at the
   benchmark's settings (20 steps, guidance 5, seeds 0..n-1; the conditional half of classifier-free guidance),
   averaged over heads, spatial positions, steps and prompts, then over the attn2 layers (each layer
   weighted equally: "layer-mean") or over every query pixel (a layer with more pixels weighs more:
   "pixel-mean"); the rows' mean cosine with the start-token row; how far the rows move when the target is
   replaced by the anchor (|h_target - h_stripped|, the rows' norm is about 11); and the share of the
   "concept signal" the UNet reads from the category: sum over layers, prompts and rows of
   p_row * |W_v h_target - W_v h_stripped|, normalised (p_row: that layer's attention share of the row).

2. UCE (hypothesis A's consequence). UCE with token_rows=to_end (train_erase.py) and token_rows=last
   (uce_sd_erase.py), anchor = the task's anchor, applied in memory. Per category of the target prompts:
   the remaining gap to the stripped prompt, sum |W' h_target - W h_stripped| / sum |W h_target - W h_stripped|
   over layers, to_k and to_v (1.00: untouched, 0: mapped onto the anchor prompt; > 1: moved away), and the
   same for to_v weighted by attention (what the attention output reads). Then "target shown": the share
   of images of the target prompts in which the task's judge (the mini detector, as `igmu evaluate` uses it)
   still finds the target, for the original model and each variant, with and without the anchor (the
   methods table of docs/methods.md erased without one).

3. CURE (hypothesis B). CURE's forget matrix E_f is what src/igmu/methods/cure.py stacks: the rows of the
   bare target prompt from its first word token to its EOS token. Its energy along the start-token row's
   direction u (|E_f u|^2 / |E_f|_F^2), its singular-value energy shares r_i, the cosine of the top singular
   direction with u, and the weights f(r_i; alpha) CURE gives each direction. Then the target-shown rate after
   CURE at alpha 2 and 16, and after two counterfactuals: CURE's formula applied to E_f with its component
   along u removed first (so that the projection falls on the concept-specific directions only), and to every
   row of the bare target after the start token (word, EOS and padding, as UCE's to_end takes them), again
   without the u component. For each: the attention-weighted relative change of the value projection on the
   target prompts' rows, and the share of the concept difference (h_target - h_stripped, rows after the start
   token) that the projector folded into the weights removes.

Everything is deterministic (seeded initial noise, closed-form edits). About a minute on one CPU thread:

    OMP_NUM_THREADS=1 python scripts/diagnose_token_rows.py [--task tasks/mini/object-circle.yaml] [--seeds 1]
"""
from __future__ import annotations

import argparse
import copy
import os
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATEGORIES = ("start token", "word tokens", "concept word", "EOS", "padding")


def categories(input_ids: list[int], mask: list[int], concept_ids: list[int]) -> list[str]:
    """The category of every row of one tokenized prompt (see the module docstring)."""
    n = sum(mask)  # start token + words + EOS
    out = ["start token"] + ["word tokens"] * (n - 2) + ["EOS"] + ["padding"] * (len(input_ids) - n)
    k = len(concept_ids)
    for i in range(1, n - k):
        if input_ids[i:i + k] == concept_ids:
            out[i:i + k] = ["concept word"] * k
    return out


def gen_settings():
    from igmu.generate import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenSettings

    return GenSettings(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE)  # the benchmark's: 20 steps, guidance 5


def shown(pipe, judge, prompts, seeds, targets) -> float:
    """Share of images (prompt x seed) in which the judge finds any target, as igmu evaluate's forgetting."""
    import numpy as np

    from igmu.generate import generate_images

    ps = [p for p in prompts for _ in seeds]
    ss = [s for _ in prompts for s in seeds]
    imgs = generate_images(pipe, ps, ss, gen_settings())
    return float(np.mean(judge.detect(imgs, list(targets)).any(axis=1)))


def attention_shares(pipe, prompts, seeds):
    """{layer: (prompts x rows mean attention share, query pixels)} over heads, pixels, steps and seeds."""
    import torch

    from igmu.diffusion.attention import record_cross_attention
    from igmu.generate import generate_images

    n = len(prompts)
    sums: dict = {}
    pixels: dict = {}

    def sink(name, probs):  # probs: 2n x heads x pixels x rows; [uncond, cond] as the pipeline batches them
        p = probs.detach()[n:].double().mean(dim=(1, 2))
        sums[name] = sums.get(name, 0) + p
        pixels[name] = probs.shape[2]
    with torch.no_grad(), record_cross_attention(pipe, sink):
        for s in seeds:
            generate_images(pipe, prompts, [s] * n, gen_settings())
    steps = gen_settings().steps * len(seeds)
    return {k: (v / steps, pixels[k]) for k, v in sums.items()}


def projections(pipe):
    from igmu.diffusion.arch import adapter_for

    return {name: (attn.to_k, attn.to_v) for name, attn in adapter_for(pipe).cross_attentions()}


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="tasks/mini/object-circle.yaml", help="a mini task file (default: %(default)s)")
    ap.add_argument("--group", default="explicit",
                    help="forget group whose prompts are measured (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=1, help="images per prompt, seeds 0..n-1 (default: %(default)s)")
    ap.add_argument("--prompts", type=int, default=0, help="use only the first N prompts of the group (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from igmu.artifacts import load_model
    from igmu.diffusion.arch import adapter_for
    from igmu.evaluation.judges import get_judge
    from igmu.methods.base import EraseRequest
    from igmu.methods.cure import (CURE, CUREConfig, concept_rows, discriminative_projector, expansion,
                                   fold_unlearn, spectral_projector)
    from igmu.methods.uce import UCE, UCEConfig
    from igmu.tasks import load_task

    task = load_task(a.task)
    records = task.forget()[a.group]
    records = records[:a.prompts] if a.prompts else records
    prompts = [r.prompt for r in records]
    stripped = [r.stripped or r.prompt for r in records]
    targets, anchor = list(task.targets), task.anchor
    seeds = list(range(a.seeds))
    pipe = load_model("mini")
    ad = adapter_for(pipe)
    judge = get_judge(task.judge)
    print(f"task {task.name}: {len(prompts)} '{a.group}' prompts x {len(seeds)} seed(s), targets {targets}, "
          f"anchor {anchor!r}, {gen_settings().steps} steps, guidance {gen_settings().guidance:g}\n")

    # ---------------------------------------------------------------- 1. token rows and attention
    tok = ad.tokenizer(prompts, padding="max_length", max_length=ad.max_length, truncation=True)
    concept_ids = [ad.tokenizer(t, add_special_tokens=False).input_ids for t in targets]
    cats = []
    for ids, m in zip(tok.input_ids, tok.attention_mask):
        c = categories(ids, m, concept_ids[0])
        for more in concept_ids[1:]:
            c = [x if x != "word tokens" else y for x, y in zip(c, categories(ids, m, more))]
        cats.append(c)
    with torch.no_grad():
        h_t, _ = ad.encode(prompts)
        h_s, _ = ad.encode(stripped)
    h_t, h_s = ad.text_rows(h_t).double(), ad.text_rows(h_s).double()
    bos = h_t[0, 0]
    cos_bos = (h_t @ bos) / (h_t.norm(dim=-1) * bos.norm())
    moved = (h_t - h_s).norm(dim=-1)
    shares = attention_shares(pipe, prompts, seeds)
    proj0 = projections(pipe)
    layer_mean = torch.stack([p for p, _ in shares.values()]).mean(0)  # prompts x rows
    total_px = sum(px for _, px in shares.values())
    pixel_mean = sum(p * px for p, px in shares.values()) / total_px
    signal = 0
    with torch.no_grad():
        for name, (p, _) in shares.items():
            Wv = proj0[name][1].weight.double()
            signal = signal + p * ((h_t - h_s) @ Wv.T).norm(dim=-1)  # prompts x rows
    masks = {c: torch.tensor([[x == c for x in row] for row in cats]) for c in CATEGORIES}
    rows = []
    for c in CATEGORIES:
        m = masks[c]
        if not m.any():
            continue
        per_prompt = m.sum(1).double().mean()
        rows.append([c, f"{per_prompt:.1f}", f"{layer_mean[m].sum() / len(prompts):.1%}",
                     f"{pixel_mean[m].sum() / len(prompts):.1%}", f"{cos_bos[m].mean():.3f}",
                     f"{moved[m].mean():.2f}", f"{signal[m].sum() / signal.sum():.1%}"])
    print("### 1. Where the UNet reads the target prompts (cross-attention share per token-row category)\n")
    print(table(["rows", "rows per prompt", "attention share (layer-mean)", "attention share (pixel-mean)",
                 "cos with start-token row", "row moved by target -> anchor (L2)", "concept signal read"], rows))
    print(f"\n({len(shares)} attn2 layers, {ad.max_length} rows per prompt; row norm "
          f"{h_t.norm(dim=-1).mean():.1f}; uniform attention would give each row {1 / ad.max_length:.1%})\n")

    # ---------------------------------------------------------------- 2. UCE token_rows to_end / last
    def erased(method, cfg, req):
        p = copy.deepcopy(pipe)
        method().erase(p, req, cfg)
        return p

    variants = {}
    for rows_kind in ("to_end", "last"):
        for anc in (anchor, None):
            variants[(rows_kind, anc)] = erased(UCE, UCEConfig(token_rows=rows_kind), EraseRequest(targets, anc))
    rows = []
    for rows_kind in ("to_end", "last"):
        proj1 = projections(variants[(rows_kind, anchor)])
        num = {c: 0.0 for c in CATEGORIES}
        den = {c: 0.0 for c in CATEGORIES}
        wnum = wden = 0.0
        with torch.no_grad():
            for name, (k0, v0) in proj0.items():
                for W0, W1 in zip((k0, v0), proj1[name]):
                    W0d, W1d = W0.weight.double(), W1.weight.double()
                    after = (h_t @ W1d.T - h_s @ W0d.T).norm(dim=-1)
                    before = ((h_t - h_s) @ W0d.T).norm(dim=-1)
                    for c in CATEGORIES:
                        num[c] += float(after[masks[c]].sum())
                        den[c] += float(before[masks[c]].sum())
                    if W0 is v0:
                        p = shares[name][0]
                        wnum += float((p * after).sum())
                        wden += float((p * before).sum())
        rows.append([f"uce token_rows={rows_kind}"] +
                    [f"{num[c] / den[c]:.2f}" if den[c] > 1e-9 else "-" for c in CATEGORIES] +
                    [f"{wnum / wden:.2f}"])
    print(f"### 2. UCE (anchor {anchor!r}): remaining gap to the stripped prompt, per row category\n")
    print(table(["variant"] + list(CATEGORIES) + ["to_v, attention-weighted"], rows))
    print("\n(1.00: the rows' projections are untouched relative to the stripped prompt; 0: mapped onto it; "
          "'-': the rows do not differ)\n")
    rows = [["original", "-", f"{shown(pipe, judge, prompts, seeds, targets):.0%}"]]
    for (rows_kind, anc), p in variants.items():
        rows.append([f"uce token_rows={rows_kind}", repr(anc) if anc else "none (script default)",
                     f"{shown(p, judge, prompts, seeds, targets):.0%}"])
    print(f"Target shown ({task.judge} judge, n = {len(prompts) * len(seeds)} images):\n")
    print(table(["model", "anchor", "target shown"], rows) + "\n")

    # ---------------------------------------------------------------- 3. CURE's forget matrix
    E = concept_rows(pipe, targets)  # the rows CURE stacks: first word token .. EOS of each bare target
    u = bos.cpu() / bos.norm()
    along = float((E @ u).pow(2).sum() / E.pow(2).sum())
    _, S, Vh = torch.linalg.svd(E, full_matrices=False)
    r = S ** 2 / (S ** 2).sum()
    print("### 3. CURE's forget matrix E_f\n")
    print(f"E_f: {E.shape[0]} rows ({', '.join(repr(t) for t in targets)}: first word token to EOS), "
          f"width {E.shape[1]}\n")
    print(table(["quantity", "value"], [
        ["energy along the start-token row direction u, ‖E_f u‖² / ‖E_f‖²_F", f"{along:.2%}"],
        ["singular-value energy shares r_i", ", ".join(f"{x:.4%}" for x in r.tolist())],
        ["cos(top singular direction, start-token direction)", f"{abs(float(Vh[0] @ u)):.4f}"],
        ["CURE weights f(r_i; alpha=2)", ", ".join(f"{x:.4f}" for x in expansion(S, 2.0).tolist())],
        ["CURE weights f(r_i; alpha=16)", ", ".join(f"{x:.4f}" for x in expansion(S, 16.0).tolist())],
        ["mean cos(row of a target prompt, start-token row), rows 0-5 / later rows",
         f"{cos_bos[:, :6].mean():.3f} / {cos_bos[:, 6:].mean():.3f}"]]))

    def cure_like(alpha, rows_kind):
        """CURE as cure.py does it ("cure"), or its formula on other forget rows (the counterfactuals)."""
        p = copy.deepcopy(pipe)
        if rows_kind == "cure":
            CURE().erase(p, EraseRequest(targets), CUREConfig(alpha=alpha))
            return p, discriminative_projector(p_orig, targets, [], alpha)
        if rows_kind == "no-bos":
            Ef = E
        else:  # like UCE's to_end rows: the bare target's rows from its word token to the end of the sequence
            Ef = torch.cat([ad.text_rows(ad.encode([t])[0]).double().cpu()[0, 1:] for t in targets])
        Ef = Ef - (Ef @ u)[:, None] * u[None]
        P = spectral_projector(Ef, alpha)
        fold_unlearn(p, P)  # folded into to_k and to_v as cure.py does (eq. 7)
        return p, P

    p_orig = pipe
    delta = (h_t - h_s).cpu()[masks["padding"] | masks["EOS"] | masks["word tokens"] | masks["concept word"]]
    rows = [["original", "-", "-", "-", f"{shown(pipe, judge, prompts, seeds, targets):.0%}"]]
    for label, rows_kind in (("cure (cure.py)", "cure"), ("E_f without its start-token component", "no-bos"),
                             ("E_f = every row after the start token, without its start-token component", "to_end")):
        for alpha in (2.0, 16.0):
            p, P = cure_like(alpha, rows_kind)
            removed = 1 - float((delta - delta @ P.T).pow(2).sum() / delta.pow(2).sum())
            proj1 = projections(p)
            num = den = 0.0
            with torch.no_grad():
                for name, (_, v0) in proj0.items():
                    W0, W1 = v0.weight.double(), proj1[name][1].weight.double()
                    w = shares[name][0]
                    num += float((w * ((h_t @ (W1 - W0).T).norm(dim=-1))).sum())
                    den += float((w * (h_t @ W0.T).norm(dim=-1)).sum())
            rows.append([label, f"{alpha:g}", f"{num / den:.1%}", f"{removed:.1%}",
                         f"{shown(p, judge, prompts, seeds, targets):.0%}"])
    print(f"\nTarget shown after CURE and two counterfactuals ({task.judge} judge, "
          f"n = {len(prompts) * len(seeds)} images). Value change: attention-weighted ‖W_v' h - W_v h‖ / ‖W_v h‖ "
          f"over the target prompts' rows; concept difference removed: 1 - ‖(I - P) d‖² / ‖d‖² for "
          f"d = h_target - h_stripped over the rows after the start token, P the projector folded into the "
          f"weights:\n")
    print(table(["model", "alpha", "value change on target prompts", "concept difference removed", "target shown"],
                rows))

if __name__ == "__main__":
    main()
