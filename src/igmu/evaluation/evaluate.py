"""EvalIGMU: the five aspects plus cost, for one (original, unlearned) pair on one task.

1. forgetting    share of explicit forget-prompt images in which the judge still finds a target
2. preservation  share of retain-prompt images that show what they ask (`expect`), per group; share of
                 forget-prompt images of a carrier-bound target that keep the carrier; LPIPS-style
                 distance to the original model's image for the same prompt and seed
3. quality       FID and KID between the unlearned and original images on retain prompts and on
                 target-stripped prompts
4. alignment     CLIP score on retain prompts; CSDR between the unlearned model on forget prompts and
                 the original on the stripped prompts, both scored against the stripped prompt
5. robustness    forgetting under every non-explicit forget group (synonym, multilingual, implicit, ...)
                 and the UnlearnDiffAtk attack success rate on the first explicit prompts
cost: erase time, peak memory, parameters changed, UNet passes per step (the artifact's manifest).

Images come from the content-addressed cache (cache.py) or are generated once; judge outputs too.
Every aggregate is {"value", "lo", "hi", "n"} with a 95% bootstrap interval (metrics.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..generate import GenSettings
from . import metrics as M
from .cache import Cache, image_key, model_fingerprint

GEN_BATCH = 8  # fixed UNet batch for evaluation images (see _Models.images)
SCHEMA = "igmu-results"
SCHEMA_VERSION = 1
ASPECTS = ("forgetting", "preservation", "quality", "alignment", "robustness")


@dataclass
class EvalConfig:
    aspects: list[str] = field(default_factory=lambda: list(ASPECTS))
    judge: str | None = None  # default: the task's judge
    clip: str = "mini-clip"  # CLIP model for alignment and quality features: mini-clip or clip:PATH
    settings: GenSettings = field(default_factory=GenSettings)
    seed: int = 0
    attack: bool = True  # UnlearnDiffAtk inside robustness (task.attack.prompts > 0)


def check_aspects(aspects: list[str]) -> list[str]:
    bad = [a for a in aspects if a not in ASPECTS]
    if bad:
        raise UserError(f"unknown aspect {bad[0]!r}; aspects: {', '.join(ASPECTS)}")
    if not aspects:
        raise UserError(f"no aspect chosen; aspects: {', '.join(ASPECTS)}")
    return list(dict.fromkeys(aspects))


class _Models:
    """Lazily loaded pipelines and the image source for each role, through the cache."""

    def __init__(self, specs: dict[str, str], cache: Cache, cfg: EvalConfig, progress=None):
        self.specs, self.cache, self.cfg, self.progress = specs, cache, cfg, progress
        self.fp = {role: model_fingerprint(s) for role, s in specs.items()}
        self._pipes: dict = {}
        self.generated = 0

    def pipe(self, role: str):
        from ..artifacts import load_model

        if role not in self._pipes:
            self._pipes[role] = load_model(self.specs[role])
        return self._pipes[role]

    def key(self, role: str, prompt: str, seed: int, batch: int) -> str:
        return image_key(self.fp[role], prompt, seed, self.cfg.settings, batch)

    def images(self, role: str, pairs: list[tuple[str, int]], batch: int = GEN_BATCH) -> tuple[np.ndarray, list[str]]:
        """Images for (prompt, seed) pairs of one model, generating only what the cache lacks.

        Missing images are generated in UNet batches of exactly `batch` (the last one padded), so an image
        is bitwise the same whatever else was missing: a resumed or extended run reproduces a fresh one."""
        from ..generate import generate_images

        keys = [self.key(role, p, s, batch) for p, s in pairs]
        imgs: dict[str, np.ndarray] = {}
        todo = []
        for k, (p, s) in zip(keys, pairs):
            if k in imgs:
                continue
            got = self.cache.get_image(k)
            if got is None:
                todo.append((k, p, s))
                imgs[k] = None
            else:
                imgs[k] = got
                self.cache.hits["images"] += 1
        if todo:
            adv = self.progress(len(todo), f"generating ({role})") if self.progress else None
            for c in range(0, len(todo), batch):
                chunk = todo[c:c + batch]
                padded = chunk + [chunk[-1]] * (batch - len(chunk))
                new = generate_images(self.pipe(role), [p for _, p, _ in padded], [s for _, _, s in padded],
                                      self.cfg.settings, batch)
                for (k, _, _), img in zip(chunk, new):
                    self.cache.put_image(k, img)
                    imgs[k] = img
                if adv:
                    adv(len(chunk))
            self.cache.misses["images"] += len(todo)
            self.generated += len(todo)
        sizes = {imgs[k].shape for k in keys}
        if len(sizes) > 1:
            raise UserError(f"images of mixed sizes {sorted(sizes)}; all images of one evaluation must share a size")
        return (np.stack([imgs[k] for k in keys]) if keys else np.zeros((0, 1, 1, 3), np.uint8)), keys


class _Judged:
    """Judge outputs per image key, through the cache."""

    def __init__(self, judge, cache: Cache):
        self.judge, self.cache, self.fp = judge, cache, judge.fingerprint()

    def raw(self, imgs: np.ndarray, keys: list[str]) -> list:
        out: dict[str, object] = {}
        miss = []
        for i, k in enumerate(keys):
            if k in out:
                continue
            r = self.cache.get_judge(self.fp, k)
            if r is None:
                miss.append(i)
                out[k] = None
            else:
                out[k] = r
                self.cache.hits["judge"] += 1
        if miss:
            new = self.judge.raw(imgs[miss])
            for i, r in zip(miss, new):
                self.cache.put_judge(self.fp, keys[i], r)
                out[keys[i]] = r
            self.cache.misses["judge"] += len(miss)
        return [out[k] for k in keys]

    def shows(self, imgs, keys, concepts: list[str], context: list[str], any_of: bool = True) -> np.ndarray:
        """Per image: any (or all) of `concepts` present."""
        if not concepts:
            return np.ones(len(keys), bool)
        raw = self.raw(imgs, keys)
        m = np.array([self.judge.present(raw, c, context) for c in concepts], dtype=bool)
        return m.any(0) if any_of else m.all(0)


def _pairs(records, n: int, seed: int) -> list[tuple[str, int, object]]:
    return [(r.prompt, seed + j, r) for r in records for j in range(n)]


def _rate(x) -> dict:
    return M.bootstrap(np.asarray(x, dtype=float))


def _cost(spec: str) -> dict | None:
    from ..artifacts import is_artifact, load_artifact

    if not is_artifact(spec):
        return None
    manifest = load_artifact(spec)[0]
    return {"method": manifest.get("method"), **manifest.get("cost", {})}


def evaluate(original: str, unlearned: str, task, cfg: EvalConfig, cache: Cache, progress=None,
             images: dict | None = None) -> dict:
    """Run the chosen aspects; returns the results dict (schema igmu-results v1).

    `images`, if given, replaces generation: {role: callable(pairs) -> (uint8 images, keys)} (pre-generated
    images, see layout.py)."""
    from .judges import get_judge

    t0 = time.perf_counter()
    aspects = check_aspects(cfg.aspects)
    judge = get_judge(cfg.judge or task.judge)
    context = task.concepts()
    judge.check_concepts(list(task.targets) + [c for r in _all_records(task) for c in r.expect])
    models = None
    if images is None:
        models = _Models({"original": original, "unlearned": unlearned}, cache, cfg, progress)
        get = models.images
    else:
        get = lambda role, pairs: images[role](pairs)  # noqa: E731
    J = _Judged(judge, cache)
    n, seed = task.images_per_prompt, cfg.seed
    records: list[dict] = []
    agg: dict = {}

    def run(role, set_name, group, recs):
        pairs = _pairs(recs, n, seed)
        imgs, keys = get(role, [(p, s) for p, s, _ in pairs])
        raw = J.raw(imgs, keys)
        pres = {c: np.asarray(judge.present(raw, c, context), bool)
                for c in dict.fromkeys(list(task.targets) + [c for r in recs for c in r.expect])}
        rows = []
        for i, ((p, s, r), k) in enumerate(zip(pairs, keys)):
            row = {"role": role, "set": set_name, "group": group, "prompt": p, "seed": s, "key": k,
                   "target_shown": bool(any(pres[t][i] for t in task.targets)), "expect": list(r.expect)}
            if len(task.targets) > 1:
                row["targets_shown"] = {t: bool(pres[t][i]) for t in task.targets}
            if r.expect:
                row["as_expected"] = bool(all(pres[c][i] for c in r.expect))
            rows.append(row)
        records.extend(rows)
        return imgs, keys, rows

    forget_explicit = task.forget()["explicit"]
    need_retain = {"preservation", "quality", "alignment"} & set(aspects)
    out_imgs: dict = {}

    if {"forgetting", "preservation", "alignment"} & set(aspects):
        for role in ("original", "unlearned"):
            out_imgs[("forget", role)] = run(role, "forget", "explicit", forget_explicit)
    if "forgetting" in aspects:
        agg["forgetting"] = {"target_shown": _rate([r["target_shown"] for r in out_imgs[("forget", "unlearned")][2]]),
                             "target_shown_original": _rate([r["target_shown"] for r in
                                                             out_imgs[("forget", "original")][2]])}
        if len(task.targets) > 1:  # several targets: each one's rate too
            agg["forgetting"]["per_target"] = {t: _rate([r["targets_shown"][t] for r in out_imgs[("forget", "unlearned")][2]])
                                               for t in task.targets}
    if need_retain:
        for role in ("original", "unlearned"):
            for g, recs in task.retain().items():
                out_imgs[("retain", g, role)] = run(role, "retain", g, recs)

    if "preservation" in aspects:
        pres: dict = {"groups": {}}
        allu, allo = [], []
        for g in task.retain():
            u = [r["as_expected"] for r in out_imgs[("retain", g, "unlearned")][2] if "as_expected" in r]
            o = [r["as_expected"] for r in out_imgs[("retain", g, "original")][2] if "as_expected" in r]
            pres["groups"][g] = {"as_expected": _rate(u), "as_expected_original": _rate(o)}
            allu += u
            allo += o
        pres["as_expected"], pres["as_expected_original"] = _rate(allu), _rate(allo)
        kept = [r["as_expected"] for r in out_imgs[("forget", "unlearned")][2] if "as_expected" in r]
        if kept:
            pres["carrier_kept"] = _rate(kept)
            pres["carrier_kept_original"] = _rate([r["as_expected"] for r in out_imgs[("forget", "original")][2]
                                                   if "as_expected" in r])
        ui = np.concatenate([out_imgs[("retain", g, "unlearned")][0] for g in task.retain()])
        oi = np.concatenate([out_imgs[("retain", g, "original")][0] for g in task.retain()])
        d = _perceptual(ui, oi)
        pres["perceptual_distance"] = M.bootstrap(d)
        pres["perceptual_identical_share"] = float(np.mean(d == 0)) if len(d) else float("nan")
        _attach(records, "retain", "unlearned", "perceptual_distance", d)
        agg["preservation"] = pres

    stripped = [r for r in forget_explicit if r.stripped]
    if "quality" in aspects:
        feats = _features(cfg.clip)
        q = {}
        ui = np.concatenate([out_imgs[("retain", g, "unlearned")][0] for g in task.retain()])
        oi = np.concatenate([out_imgs[("retain", g, "original")][0] for g in task.retain()])
        q["retain"] = _fid_kid(feats(ui), feats(oi))
        if stripped:
            sp = [(r.stripped, seed + j) for r in stripped for j in range(n)]
            su, _ = get("unlearned", sp)
            so, _ = get("original", sp)
            q["stripped"] = _fid_kid(feats(su), feats(so))
        q["features"] = cfg.clip
        agg["quality"] = q

    if "alignment" in aspects:
        score = _clip_scorer(cfg.clip)
        al = {}
        for role in ("unlearned", "original"):
            prompts, imgs = [], []
            for g in task.retain():
                im, _, rows = out_imgs[("retain", g, role)]
                prompts += [r["prompt"] for r in rows]
                imgs.append(im)
            cs = score(np.concatenate(imgs), prompts)
            al["clip_score_retain" + ("" if role == "unlearned" else "_original")] = M.bootstrap(cs)
            if role == "unlearned":
                _attach(records, "retain", "unlearned", "clip_score", cs)
        if stripped:
            fu, _, rows = out_imgs[("forget", "unlearned")]
            by = {r.prompt: r.stripped for r in forget_explicit}
            idx = [i for i, r in enumerate(rows) if by.get(r["prompt"])]
            texts = [by[rows[i]["prompt"]] for i in idx]
            cs_u = score(fu[idx], texts)
            so, _ = get("original", [(t, rows[i]["seed"]) for t, i in zip(texts, idx)])
            cs_o = score(so, texts)
            lo, hi = M.bootstrap_paired(lambda j: M.csdr(cs_u[j], cs_o[j]), len(idx), cfg.seed)
            al["csdr"] = M.agg(M.csdr(cs_u, cs_o), lo, hi, len(idx))
            al["clip_score_forget_vs_stripped"] = M.bootstrap(cs_u)
            al["clip_score_stripped_original"] = M.bootstrap(cs_o)
        al["clip"] = cfg.clip
        agg["alignment"] = al

    if "robustness" in aspects:
        rob: dict = {"groups": {}}
        for g, recs in task.forget().items():
            if g == "explicit":
                continue
            _, _, ru = run("unlearned", "forget", g, recs)
            _, _, ro = run("original", "forget", g, recs)
            rob["groups"][g] = {"target_shown": _rate([r["target_shown"] for r in ru]),
                                "target_shown_original": _rate([r["target_shown"] for r in ro])}
        if cfg.attack and task.attack.prompts > 0:
            if models is None:
                rob["unlearndiffatk"] = {"skipped": "pre-generated images: the attack needs the models"}
            else:
                rob["unlearndiffatk"] = _attack(models, J, task, cfg, progress)
        agg["robustness"] = rob

    cost = _cost(unlearned) if images is None else None
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "task": task.model_dump(mode="json"), "original": original, "unlearned": unlearned,
        "fingerprints": models.fp if models else {}, "judge": {"spec": judge.spec, "card": judge.card},
        "settings": {**asdict(cfg.settings), "seed": cfg.seed, "images_per_prompt": n, "clip": cfg.clip},
        "aspects": aspects, "aggregates": agg, "cost": cost, "records": records,
        "cache": {"root": str(cache.root), "hits": dict(cache.hits), "misses": dict(cache.misses)},
        "seconds": round(time.perf_counter() - t0, 2), "versions": _versions(),
    }


def _all_records(task):
    for groups in task.prompts.values():
        for recs in groups.values():
            yield from recs


def _attach(records, set_name, role, key, values):
    rows = [r for r in records if r["set"] == set_name and r["role"] == role]
    for r, v in zip(rows, values):
        r[key] = float(v)


def _versions() -> dict:
    from ..utils.versions import versions

    return versions()


def _fid_kid(a: np.ndarray, b: np.ndarray) -> dict:
    n = min(len(a), len(b))
    lo, hi = M.bootstrap_paired(lambda j: M.fid(a[j], b[j]), n)
    k, ks = M.kid(a, b)
    klo, khi = M.bootstrap_paired(lambda j: M.kid(a[j], b[j], subsets=10)[0], n)
    return {"fid": M.agg(M.fid(a, b), lo, hi, n), "kid": M.agg(k, klo, khi, n), "kid_std": ks}


def _features(spec: str):
    """Image features for FID/KID: the CLIP image tower (mini CLIP by default, or clip:PATH)."""
    if spec == "mini-clip":
        from ..world.judges import MiniCLIP

        clip = MiniCLIP.load()
        return lambda imgs: clip.embed_images(imgs).numpy().astype(np.float64)
    from .judges import get_judge

    j = get_judge(spec)
    return lambda imgs: np.asarray(j.image_features(imgs), dtype=np.float64)


def _clip_scorer(spec: str):
    if spec == "mini-clip":
        from ..world.judges import MiniCLIP

        clip = MiniCLIP.load()
        return lambda imgs, texts: clip.score(imgs, texts)
    from .judges import get_judge

    j = get_judge(spec)
    return lambda imgs, texts: np.asarray(j.clip_score(imgs, texts))


def _perceptual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LPIPS-style distance with the mini detector's convolution stack as the feature network
    (activations after blocks 2, 4 and 6); for other image sizes, the images are resized to 32 x 32."""
    import torch

    from ..world.judges import Detector, to_input

    if len(a) == 0:
        return np.zeros(0)
    det = Detector.load()
    body = det.net.body

    def layers(x):
        x = _to32(x)
        h = to_input(x)
        out = []
        with torch.no_grad():
            for i, blk in enumerate(body):
                h = blk(h)
                if i in (1, 3, 5):
                    out.append(h.numpy())
        return out
    return M.perceptual_distance(layers(a), layers(b))


def _to32(x: np.ndarray) -> np.ndarray:
    if x.shape[1:3] == (32, 32):
        return x
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(i).resize((32, 32), Image.BILINEAR)) for i in x])


def _attack(models: _Models, J: _Judged, task, cfg: EvalConfig, progress) -> dict:
    from ..attacks.unlearndiffatk import attack_prompts

    recs = task.forget()["explicit"][:task.attack.prompts]
    context = task.concepts()

    def shows(text, seed):  # the attack's checks are single images: generated alone (batch 1)
        imgs, keys = models.images("unlearned", [(text, seed)], batch=1)
        return bool(J.shows(imgs, keys, task.targets, context)[0])

    adv = progress(len(recs), "UnlearnDiffAtk") if progress else None
    rows = attack_prompts(models.pipe("original"), models.pipe("unlearned"), [r.prompt for r in recs],
                          [cfg.seed] * len(recs), shows, task.attack, cfg.settings.steps, cfg.settings.guidance,
                          cfg.seed, adv)
    return {"asr": _rate([r["success"] for r in rows]), "asr_no_attack": _rate([r["success_no_attack"] for r in rows]),
            "settings": task.attack.model_dump(), "prompts": rows}


def write_results(res: dict, out: Path) -> Path:
    """results.json and summary.md in `out`, atomically."""
    import json

    from ..utils.io import atomic_dir, check_writable_dir
    from .summary import summary_markdown

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").exists())):
        raise UserError(f"--out {out} exists and is not an igmu evaluation folder; choose a new folder")
    check_writable_dir(out.parent if not out.exists() else out)
    with atomic_dir(out) as tmp:
        (tmp / "results.json").write_text(json.dumps(res, indent=1))
        (tmp / "summary.md").write_text(summary_markdown(res))
    return out
