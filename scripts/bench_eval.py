"""EvalIGMU on the mini world: metric validation against the renderer's ground truth, and speed.

  --validate   every judge and aspect metric against ground truth (renders, whose content is known)
  --speed      all five aspects for one method (UCE) on one mini task at default sizes, timed; then a second
               run that adds one aspect, counting images generated (should be 0: all reused from the cache)

Writes out/bench/eval.json and prints Markdown tables (figures for docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402


def _renders(n: int, seed: int):
    from igmu.world.render import render
    from igmu.world.scenes import labels, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    return np.stack([render(s) for s in scenes]), scenes, [labels(s) for s in scenes]


def _truth(concept: str, lab: dict) -> bool:
    from igmu.world.vocab import EN, IDENTITIES

    if concept in EN["shape"]:
        return concept in lab["objects"]
    if concept in EN["color"]:
        return concept in lab["colors"]
    if concept in EN["style"]:
        return concept in lab["styles"]
    if concept in IDENTITIES:
        return lab["identity"] == concept
    if concept == "person":
        return bool(lab["carrier"])
    if concept == "hex mark":
        return bool(lab["mark"])
    raise KeyError(concept)


def validate_judges(n: int) -> dict:
    """Per judge and concept kind: balanced accuracy of "concept shown" against the renderer's labels."""
    from igmu.evaluation.judges import get_judge
    from igmu.world.vocab import COLORS, IDENTITIES, SHAPES, STYLES

    imgs, _, labs = _renders(n, seed=11)
    kinds = {"shape": SHAPES, "color": COLORS, "style": STYLES, "identity": IDENTITIES, "person": ["person"],
             "hex mark": ["hex mark"]}
    context = SHAPES + COLORS + STYLES + IDENTITIES + ["person", "hex mark"]
    out = {}
    for spec in ("mini", "mini-clip"):
        j = get_judge(spec)
        raw = j.raw(imgs)
        res = {}
        for kind, concepts in kinds.items():
            tp = tn = pos = neg = 0
            for c in concepts:
                pred = np.asarray(j.present(raw, c, context), bool)
                truth = np.array([_truth(c, lab) for lab in labs])
                tp += int((pred & truth).sum())
                tn += int((~pred & ~truth).sum())
                pos += int(truth.sum())
                neg += int((~truth).sum())
            res[kind] = {"balanced_accuracy": 0.5 * (tp / max(pos, 1) + tn / max(neg, 1)), "positives": pos,
                         "negatives": neg}
        out[spec] = res
    return out


def validate_metrics(n: int) -> dict:
    """FID/KID, perceptual distance, CLIP score and CSDR on renders whose difference is known."""
    from dataclasses import replace

    from igmu.evaluation import metrics as M
    from igmu.evaluation.evaluate import _features
    from igmu.evaluation.registry import get
    from igmu.world.captions import canonical
    from igmu.world.render import Obj, Scene, render
    from igmu.world.vocab import BACKGROUNDS, COLORS, SHAPES, STYLES

    rng = np.random.default_rng(5)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    styled = [Scene("object", pick(BACKGROUNDS), [Obj(pick(SHAPES), pick(COLORS), pick(STYLES),
                                                      float(rng.uniform(12, 20)), float(rng.uniform(12, 20)),
                                                      float(rng.uniform(6, 9)))]) for _ in range(n)]
    plain = [replace(s, objects=[replace(s.objects[0], style="plain")]) for s in styled]
    moved = [replace(s, objects=[replace(s.objects[0], cx=s.objects[0].cx + 1)]) for s in styled]
    R = lambda ss: np.stack([render(s) for s in ss])  # noqa: E731
    im_styled, im_plain, im_moved = R(styled), R(plain), R(moved)
    net = get("features", "mini-clip")
    feats = lambda imgs: _features(net, imgs)  # noqa: E731
    res = {}
    # FID/KID: a set against an independent draw of the same distribution, and against sets where a growing
    # share of images lost their style (a known distribution shift): FID must grow with the share.
    ref = R([Scene("object", pick(BACKGROUNDS), [Obj(pick(SHAPES), pick(COLORS), pick(STYLES))]) for _ in range(n)])
    fr = feats(ref)
    curve = []
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        k = int(share * n)
        mix = np.concatenate([im_plain[:k], im_styled[k:]])
        fm = feats(mix)
        curve.append({"share_shifted": share, "fid": M.fid(fm, fr), "kid": M.kid(fm, fr)[0]})
    fids = [c["fid"] for c in curve]
    kids = [c["kid"] for c in curve]
    res["fid_kid_shift_curve"] = curve
    res["fid_monotone"] = bool(all(a < b for a, b in zip(fids, fids[1:])))
    res["kid_monotone"] = bool(all(a < b for a, b in zip(kids, kids[1:])))
    # perceptual distance: a 1-pixel shift (same content) must be closer than losing the style (content change)
    perceptual = get("perceptual", "mini").distance
    d_same, d_diff = perceptual(im_styled, im_moved), perceptual(im_styled, im_plain)
    res["perceptual_auc_content_change_vs_shift"] = float((d_diff[:, None] > d_same[None, :]).mean())
    res["perceptual_pairs"] = n
    # CLIP score: the image's own caption must score above the caption of its style-stripped scene
    score = get("clip-score", "mini-clip").score
    cs_own = score(im_styled, [canonical(s) for s in styled])
    cs_strip = score(im_styled, [canonical(s) for s in plain])
    res["clip_score_pairwise_accuracy"] = float((cs_own > cs_strip).mean())
    # CSDR (IGMU's per-pair rate, %): renders of the styled scene vs renders of the stripped scene, scored against
    # the stripped caption: positive for styled images (they carry the target), zero for the stripped renders
    texts = [canonical(s) for s in plain]
    cs_p = score(im_plain, texts)
    res["csdr_styled_vs_stripped"] = M.csdr(score(im_styled, texts), cs_p)["value"]  # percent, per-pair mean
    res["csdr_stripped_vs_itself"] = M.csdr(cs_p, cs_p)["value"]
    return res


def validate_attack(spec: str = "unlearndiffatk:fast") -> dict:
    """UnlearnDiffAtk inside `igmu evaluate`, on a model whose word 'striped' was broken by hand (so the concept
    is still in the UNet and reachable, e.g. through the synonym 'stripy'): ASR with and without the attack.
    Every attack on this model: scripts/bench_attacks.py validate."""
    import tempfile

    from igmu.evaluation.cache import Cache
    from igmu.evaluation.evaluate import EvalConfig, evaluate
    from igmu.tasks import load_task
    from igmu.world.erasure_checks import save_broken_word_model

    with tempfile.TemporaryDirectory() as d:
        save_broken_word_model(d, "striped", "plain")
        task = load_task("mini:style-striped")
        task.attack.prompts = 8
        res = evaluate("mini", d, task, EvalConfig(aspects=["forgetting", "robustness"], attacks=[spec]),
                       Cache(Path(d) / "cache"))
    a = res["aggregates"]
    atk = a["robustness"]["attacks"][spec]
    return {"attack": spec, "forgetting_target_shown": a["forgetting"]["target_shown"], "asr": atk["asr"],
            "asr_no_attack": atk["asr_no_attack"], "adversarial_prompts": [r["adversarial_prompt"] for r in atk["prompts"]]}


def speed(task_name: str, method: str) -> dict:
    from igmu.evaluation.cache import Cache
    from igmu.evaluation.evaluate import ASPECTS, EvalConfig, evaluate
    from igmu.erase import run_erase
    from igmu.tasks import load_task

    work = Path("out/bench/eval-speed")
    shutil.rmtree(work, ignore_errors=True)
    task = load_task(f"mini:{task_name}")
    art = run_erase("mini", method, task.targets, task.anchor, [], None, [], work / "artifact")
    first = [a for a in ASPECTS if a != "alignment"]
    t0 = time.perf_counter()
    r1 = evaluate("mini", str(art), task, EvalConfig(aspects=first), Cache(work / "cache"))
    t1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    r2 = evaluate("mini", str(art), task, EvalConfig(), Cache(work / "cache"))
    t2 = time.perf_counter() - t0
    return {"task": task_name, "method": method, "first_run_aspects": first, "first_run_seconds": round(t1, 1),
            "first_run_images_generated": r1["cache"]["misses"]["images"],
            "second_run_aspects": list(ASPECTS), "second_run_seconds": round(t2, 1),
            "second_run_images_generated": r2["cache"]["misses"]["images"],
            "second_run_images_reused": r2["cache"]["hits"]["images"],
            "attack_prompts": task.attack.prompts, "images_per_prompt": task.images_per_prompt,
            "summary": {k: v for k, v in r2["aggregates"].items()}}


def main():
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--n", type=int, default=400, help="renders per validation")
    ap.add_argument("--task", default="style-striped")
    ap.add_argument("--method", default="uce")
    ap.add_argument("--out", default="out/bench/eval.json")
    a = ap.parse_args()
    if not (a.validate or a.speed):
        a.validate = a.speed = True
    out = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    if a.validate:
        t0 = time.perf_counter()
        out["judges"] = validate_judges(a.n)
        out["metrics"] = validate_metrics(a.n)
        out["attack"] = validate_attack()
        out["validation_seconds"] = round(time.perf_counter() - t0, 1)
        print("\n| judge | concept kind | balanced accuracy vs renderer | positives / negatives |\n|---|---|---|---|")
        for spec, kinds in out["judges"].items():
            for k, v in kinds.items():
                print(f"| {spec} | {k} | {v['balanced_accuracy']:.1%} | {v['positives']} / {v['negatives']} |")
        print(json.dumps(out["metrics"], indent=1))
        print(json.dumps(out["attack"], indent=1))
    if a.speed:
        out["speed"] = speed(a.task, a.method)
        s = out["speed"]
        print(f"\nspeed: {s['method']} on {s['task']}: all aspects but alignment {s['first_run_seconds']} s "
              f"({s['first_run_images_generated']} images generated); then all five {s['second_run_seconds']} s, "
              f"{s['second_run_images_generated']} images generated, {s['second_run_images_reused']} reused")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
