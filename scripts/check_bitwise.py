"""Check that a change left every method's artifacts bitwise identical.

Runs `igmu erase` for every registered method (small per-method budgets, so the whole check takes a few
minutes on one thread) on the shipped mini model and on tiny SD1 / SD2 pipelines built from configs, once
with the code of a git revision (checked out in a temporary `git worktree`, run with PYTHONPATH pointing at
it) and once with the working tree, and compares the artifacts: every tensor of weights.safetensors must be
exactly equal (names, dtypes, shapes, values), and so must the sampling spec of inference-time methods.
Each artifact then generates two images (`igmu generate --model ARTIFACT`, 3 steps), which must be equal
pixel for pixel too (this covers applying artifacts and the sampling hooks of inference-time methods).
Prints one line per (method, model, request) and exits 1 on any difference or failure.

    python scripts/check_bitwise.py --rev 02045f7              # all methods, models mini, sd1, sd2
    python scripts/check_bitwise.py --rev main --methods esd,uce --models mini

Two requests per (method, model): "plain" (one target, the method's options apart from the budget) and
"rich" (two targets where the method takes several, an anchor, a preserved concept, and non-default
options that reach other code paths: ESD-u, CA's noise-based loss with a frozen anchor model, EraseDiff's
adaptive lambda, ...).
Each erasure runs in-process (one Python process per revision, to avoid 100 torch imports) with torch's
global RNG seeded to 0 before it, so both sides start from the same state.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision_sides import ROOT, resolve_rev, revision_tree, run_sides  # noqa: E402

# small budgets: a few iterations of every loop (the defaults would take an hour)
BUDGET = {
    "esd": ["iterations=2", "sample_steps=3"],
    "esd-lora": ["iterations=2", "sample_steps=3"],
    "uce": [],
    "cure": [],
    "fmn": ["iterations=2", "n_images=2", "sample_steps=3"],
    "conceptprune": ["samples=2", "sample_steps=3", "timesteps=2"],
    "spm": ["iterations=2", "sample_steps=3", "anchor_samples=2"],
    "mace": ["lora_steps=2", "n_images=2", "sample_steps=3", "n_prompts=3"],
    "negprompt": [],
    "sld": ["sld_warmup_steps=1"],  # so that safety guidance acts within the 3 generation steps
    "rece": ["epochs=2"],
    "advunlearn": ["iterations=3", "warmup_iter=1", "attack_step=2", "sample_steps=3", "pool_size=2",
                   "retain_batch=2"],
    "receler": ["iterations=2", "advrs_iters=2", "sample_steps=3", "num_advrs_prompts=4"],
    "ca": ["iterations=2", "n_images=4", "n_preserve_images=2", "sample_steps=3", "batch_size=2"],
    "doco": ["iterations=3", "warm_up=1", "n_images=4", "n_preserve_images=2", "sample_steps=3", "batch_size=2"],
    "sa": ["iterations=2", "n_images=4", "n_replay_images=4", "n_fisher=2", "fisher_timesteps=2", "sample_steps=3",
           "batch_size=2"],
    "salun": ["epochs=1", "forget_images=4", "retain_images=2", "sample_steps=3", "batch_size=2"],
    "erasediff": ["epochs=1", "forget_images=4", "retain_images=2", "sample_steps=3", "batch_size=2"],
    "scissorhands": ["epochs=1", "prune_num=2", "forget_images=4", "retain_images=2", "sample_steps=3",
                     "batch_size=2"],
    "speed": ["aug_num=2"],
    "gloce": ["n_gen=2", "n_anchor=2", "sample_steps=3", "st_timestep=1", "end_timestep=2"],
    "adavd": [],
    "safree": [],
    "seot": [],
    "stereo": ["iterations=2", "ti_steps=2", "n_iterations=1", "gallery_images=2", "gallery_steps=3",
               "sample_steps=3"],
    "sdd": ["iterations=2", "sample_steps=3"],
    "taskvector": ["iterations=2", "images=2", "batch_size=2", "sample_steps=3"],
}
# the "rich" request: other options that reach other code paths
RICH = {
    "esd": ["train_method=noxattn"],
    "esd-lora": ["rank=2", "negative_guidance=2"],
    "fmn": ["train_method=xattn", "use_pooler=false"],
    "conceptprune": ["contexts=['a {}', '{} here']"],
    "mace": ["use_mask=false", "importance_sampling=false"],
    "sld": ["preset=strong", "sld_threshold=0.02"],
    "rece": ["with_to_k=false"],
    "cure": ["alpha=5", "with_to_k=false"],
    "advunlearn": ["component=ffn"],
    "receler": ["advrs_iters=0"],
    "ca": ["loss=noise-based", "anchor_model=frozen", "parameter_group=xattn"],
    "doco": ["prior_loss_weight=0.5", "surgery_strength=0.5"],
    "sa": ["train_method=xattn"],
    "salun": ["mask_ratio=0.3", "saliency_guidance=0"],
    "erasediff": ["eta=0.5", "train_method=noxattn"],
    "scissorhands": ["forget_loss=ascent", "memory_num=2", "trim=attn1"],
    "speed": ["params=KV", "prior_filter=false", "lamb=0.1"],
    "gloce": ["update_rank=4", "eta=0.5"],
    "adavd": ["token_sim=false", "joint_cfg=false"],
    "safree": ["self_validation=false", "negative_prompt=false"],
    "seot": ["alpha=0.5", "require_target=false"],
    "stereo": ["train_method=xattn", "n_iterations=2", "num_adv_concepts=1"],
    "sdd": ["concept_method=composite", "finetuning_method=noxattn"],
    "taskvector": ["train_group=xattn", "alpha=0.5"],
}
MODELS = ("mini", "sd1", "sd2")
GEN_PROMPT = "a red circle on a dark background"


def cases(methods: list[str], models: list[str], multi: dict[str, bool]) -> list[dict]:
    out = []
    for model in models:
        for m in methods:
            out.append({"id": f"{m}-{model}-plain", "method": m, "model": model, "targets": ["circle"],
                        "anchor": None, "preserve": [], "sets": BUDGET[m]})
            out.append({"id": f"{m}-{model}-rich", "method": m, "model": model,
                            "targets": ["circle", "star"] if multi[m] else ["circle"], "anchor": "square",
                            "preserve": ["triangle"], "sets": BUDGET[m] + RICH.get(m, [])})
    return out


# ---------------------------------------------------------------- the driver (runs inside one revision's code)

def drive(spec_file: str) -> int:
    """Run every erasure of the spec with the igmu found on PYTHONPATH; write status.json."""
    import torch
    from typer.testing import CliRunner

    import igmu
    from igmu.cli import app

    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    src = Path(igmu.__file__).resolve().parent.parent
    if src != Path(spec["src"]).resolve():
        print(f"igmu imported from {src}, expected {spec['src']}", file=sys.stderr)
        return 2
    status = {}
    runner = CliRunner()
    for c in spec["cases"]:
        torch.manual_seed(0)
        args = ["erase", "--method", c["method"], "--model", spec["models"][c["model"]], "--out", str(out / c["id"])]
        for t in c["targets"]:
            args += ["--target", t]
        if c["anchor"]:
            args += ["--anchor", c["anchor"]]
        for p in c["preserve"]:
            args += ["--preserve", p]
        for s in c["sets"]:
            args += ["--set", s]
        t0 = time.perf_counter()
        res = runner.invoke(app, args)
        status[c["id"]] = {"exit": res.exit_code, "output": res.output.strip().splitlines()[-1:] if res.output else [],
                           "error": repr(res.exception) if res.exception and res.exit_code not in (0, 2) else None,
                           "seconds": round(time.perf_counter() - t0, 2)}
        if res.exit_code == 0:
            gen = runner.invoke(app, ["generate", "--model", str(out / c["id"]), "--prompt", GEN_PROMPT, "-n", "2",
                                      "--steps", "3", "--out", str(out / f"{c['id']}-images")])
            status[c["id"]]["generate_exit"] = gen.exit_code
        print(f"  {c['id']}: exit {res.exit_code} ({status[c['id']]['seconds']} s)", file=sys.stderr, flush=True)
    (out / "status.json").write_text(json.dumps(status, indent=1))
    return 0


# ---------------------------------------------------------------- comparing


def compare(a: Path, b: Path) -> tuple[bool, str]:
    from safetensors.torch import load_file

    import torch

    fa, fb = a / "weights.safetensors", b / "weights.safetensors"
    if not fa.is_file() or not fb.is_file():
        return False, f"missing artifact ({'revision' if not fa.is_file() else 'working tree'})"
    ta, tb = load_file(str(fa)), load_file(str(fb))
    if set(ta) != set(tb):
        only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
        return False, f"tensor names differ: only in revision {only_a[:2]}, only in working tree {only_b[:2]}"
    for k in sorted(ta):
        x, y = ta[k], tb[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False, f"{k}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"
        if not torch.equal(x, y):
            d = (x.double() - y.double()).abs().max().item()
            return False, f"{k}: values differ (max |diff| {d:.3g})"
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    if ma.get("sampling") != mb.get("sampling"):
        return False, f"sampling spec differs: {ma.get('sampling')} vs {mb.get('sampling')}"
    ia, ib = _images(Path(f"{a}-images")), _images(Path(f"{b}-images"))
    if ia is None or ib is None:
        return False, f"generating from the artifact failed ({'revision' if ia is None else 'working tree'})"
    if len(ia) != len(ib) or any(not np.array_equal(x, y) for x, y in zip(ia, ib)):
        return False, "images generated from the artifacts differ"
    what = f"{len(ta)} tensors" if ta else f"sampling {ma['sampling']['type']}" if ma.get("sampling") else "0 tensors"
    return True, what + f", {len(ia)} images"


def _images(folder: Path):
    from PIL import Image

    files = sorted(folder.glob("images/*.png"))
    return [np.asarray(Image.open(f)) for f in files] if files else None


def build_models(where: Path, models: list[str]) -> dict[str, str]:
    """The model each name stands for; tiny pipelines are built from configs (seed 0) and saved once."""
    sys.path.insert(0, str(ROOT / "src"))
    out = {}
    for m in models:
        if m == "mini":
            out[m] = "mini"
            continue
        from igmu.models.tiny import make_tiny_pipeline

        folder = where / f"tiny-{m}"
        make_tiny_pipeline(m).save_pretrained(str(folder), safe_serialization=True)
        out[m] = str(folder)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="main", help="git revision to compare the working tree with")
    ap.add_argument("--methods", default=",".join(BUDGET), help="comma-separated methods (default: all)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: mini, sd1, sd2")
    ap.add_argument("--jobs", type=int, default=1, help="2: run the two sides at the same time")
    ap.add_argument("--keep", default=None, help="keep the artifacts in this folder")
    ap.add_argument("--driver", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.driver:
        return drive(a.driver)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in methods if m not in BUDGET] + [m for m in models if m not in MODELS]
    if bad:
        print(f"error: unknown method or model {bad[0]!r}", file=sys.stderr)
        return 2
    rev = resolve_rev(a.rev)
    if rev is None:
        return 2
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="igmu-bitwise-")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with revision_tree(rev, tmp, keep=bool(a.keep)) as wt:
        multi = _multi(methods)
        spec_models = build_models(tmp, models)

        def spec(side, src, out):
            return {"out": str(out), "src": str(src), "models": spec_models, "cases": cases(methods, models, multi)}

        if not run_sides(__file__, tmp, wt, a.jobs, spec,
                         lambda side, src, sp: f"running {len(sp['cases'])} erasures with the {side} code ({src})"):
            return 1
        st_a = json.loads((tmp / "revision" / "status.json").read_text())
        st_b = json.loads((tmp / "working" / "status.json").read_text())
        n_bad = 0
        for c in cases(methods, models, multi):
            sa, sb = st_a[c["id"]], st_b[c["id"]]
            if sa["exit"] or sb["exit"]:
                same = sa["exit"] == sb["exit"] and sa["output"] == sb["output"] and not sa["error"] and not sb["error"]
                what = f"both refused alike: {sb['output']}" if same else (
                    f"FAILED: revision exit {sa['exit']} {sa['error'] or sa['output']}; "
                    f"working tree exit {sb['exit']} {sb['error'] or sb['output']}")
                ok = False  # a refusal is not a check of the artifact: count it
            else:
                ok, what = compare(tmp / "revision" / c["id"], tmp / "working" / c["id"])
            n_bad += not ok
            label = "identical" if ok else "DIFFERENT"
            print(f"{c['method']:<13} {c['model']:<5} {c['id'].rsplit('-', 1)[1]:<6} {label:<9} {what}"
                  f"  ({sa['seconds']:.1f} s / {sb['seconds']:.1f} s)")
        n = len(cases(methods, models, multi))
        print(f"{n - n_bad} of {n} identical (revision {rev} vs working tree; {time.perf_counter() - t0:.0f} s)")
        return 1 if n_bad else 0


def _multi(methods: list[str]) -> dict[str, bool]:
    """Whether each method takes several targets (from the working tree's registry)."""
    sys.path.insert(0, str(ROOT / "src"))
    from igmu.methods import REGISTRY

    return {m: REGISTRY[m].multi_concept for m in methods}


if __name__ == "__main__":
    sys.exit(main())
