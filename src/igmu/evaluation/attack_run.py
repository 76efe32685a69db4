"""`igmu attack` and `igmu attacks`: run one attack on prompts and write its results; list the attacks.

    DIR/results.json          schema igmu-attack v1: the attack, its budget's numbers, models, judge, settings,
                              ASR and no-attack share (95% Wilson intervals), cost, one record per prompt
    DIR/images/NNN.png        the image of each prompt's last check (the success, or the last candidate)
    DIR/embeddings/NAME.safetensors   learned token embeddings (CCE), {placeholder: vector}

The folder is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import metrics as M

SCHEMA, SCHEMA_VERSION = "igmu-attack", 1


def attacks_table() -> list[dict]:
    """One row per attack: name, mechanism, access, what it needs, cost per prompt at each budget."""
    from ..attacks.base import ACCESS, BUDGETS, load_all

    rows = []
    for name, cls in sorted(load_all().items()):
        a = cls()
        rows.append({"name": name, "title": a.title, "mechanism": a.mechanism, "access": ACCESS[a.access],
                     "needs_original": a.needs_original, "needs_target_in_prompt": a.needs_target_in_prompt,
                     "source": a.source, "budgets": {b: a.budget(b).model_dump() for b in BUDGETS},
                     "cost": {b: a.cost(a.budget(b)) for b in BUDGETS}})
    return rows


def check_out(out: Path) -> None:
    from ..utils.io import check_writable_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").is_file())):
        raise UserError(f"--out {out} exists and is not an igmu attack folder; choose a new folder")
    check_writable_dir(out.parent if not out.exists() else out)


def run_attack_command(attack: str, unlearned: str, original: str | None, target: str, prompts: list[str],
                       budget: str, out: Path, judge: str = "mini", seed: int = 0, settings=None,
                       kind: str | None = None, context: list[str] | None = None, progress=None) -> dict:
    """Validate everything, run the attack, write DIR atomically; returns the results dict."""
    from ..attacks.base import get_attack, run_attack, summary_cost
    from ..generate import GenSettings
    from ..artifacts import load_model
    from .judges import get_judge

    a = get_attack(attack)
    a.budget(budget, kind)  # unknown budget: one line before anything loads
    settings = settings or GenSettings()
    settings.validate()
    if not target or not target.strip():
        raise UserError("empty --target; give the erased concept as text, e.g. --target circle")
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UserError("empty prompt; give a non-empty --prompt or a --prompts file")
    if a.needs_original and not original:
        raise UserError(f"attack {attack} needs the original model: give --original MODEL ({a.mechanism})")
    check_out(out)
    j = get_judge(judge)
    j.check_concepts([target])
    context = list(dict.fromkeys([target.strip()] + [c.strip() for c in context or [] if c.strip()]))
    un = load_model(unlearned)
    orig = load_model(original) if original else None

    def shows(imgs):
        return j.detect(imgs, [target], context)[:, 0]

    t0 = time.perf_counter()
    res = run_attack(attack, un, orig, target.strip(), prompts, [seed] * len(prompts), budget, shows, settings, seed,
                     kind, progress)
    recs = res["records"]
    from dataclasses import asdict

    doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "attack": attack, "title": a.title, "source": a.source,
           "budget": {"name": budget, **res["budget_values"]}, "target": target.strip(), "kind": kind,
           "unlearned": unlearned, "original": original, "judge": {"spec": j.spec, "card": j.card},
           "settings": {**asdict(settings), "seed": seed},
           "asr": M.wilson([r["success"] for r in recs]), "asr_no_attack": M.wilson([r["success_no_attack"] for r in recs]),
           "cost": summary_cost(res) | {"shared_seconds": res["shared_seconds"]},
           "seconds": round(time.perf_counter() - t0, 2), "records": []}
    write_attack_results(doc, recs, out)
    return doc


def write_attack_results(doc: dict, recs: list[dict], out: Path) -> Path:
    from PIL import Image
    from safetensors.torch import save_file

    from ..utils.io import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        saved: dict[str, str] = {}
        for i, r in enumerate(recs):
            row = {k: v for k, v in r.items() if not k.startswith("_") and k != "embedding"}
            row["image"] = f"images/{i:03d}.png"
            Image.fromarray(np.asarray(r["_image"])).save(tmp / row["image"])
            if r.get("embedding"):
                key = json.dumps(sorted(r["embedding"]))
                if key not in saved:  # one file per distinct learned embedding (CCE learns one per run)
                    (tmp / "embeddings").mkdir(exist_ok=True)
                    name = f"embeddings/{doc['attack']}-{len(saved)}.safetensors"
                    save_file({k: v.contiguous() for k, v in r["embedding"].items()}, str(tmp / name))
                    saved[key] = name
                row["embedding"] = saved[key]
            doc["records"].append(row)
        (tmp / "results.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return out


def summary_line(doc: dict) -> str:
    a, n = doc["asr"], doc["asr_no_attack"]
    return (f"{doc['attack']} ({doc['budget']['name']}): ASR {a['value']:.0%} [{a['lo']:.0%}, {a['hi']:.0%}] "
            f"on {a['n']} prompts (no attack: {n['value']:.0%}); {doc['cost']['seconds_per_prompt']:.1f} s per prompt")
