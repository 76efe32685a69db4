"""`igmu calibrate`: choose each method's strength for one model by one fixed rule, on calibration concepts
that are not test concepts, and write a preset file (igmu/presets.py) that `igmu erase --preset` and bench
configs use.

Published hyper-parameters were set for Stable Diffusion (an 860M-parameter UNet, layers 320-1,280 wide).
On another model, a smaller one above all, the same learning rate and step count can move the weights by a
negligible fraction of their scale, so a benchmark at published defaults measures miscalibration. This
module replaces per-method hand scaling with one rule, the same for every method (RULE below, "ladder-v1"):

1. Compute budget. Every option a method declares as a cost knob (Eraser.budget: option -> role) is capped
   at the budget's value for its role; a published value below the cap stays. Roles: `steps` (optimizer
   steps; the knobs of one group, `steps` or `steps:<name>`, shrink by one ratio, so a warm-up keeps its
   share), `epochs` (passes over drawn data: raised by the factor its `images` knob was cut, to keep the
   published number of passes' worth of steps, then held under the `steps` cap given the `batch` knob),
   `images` (training or replay images drawn per concept), `images_small` (images drawn per retain
   prompt), `sample_steps` (sampler steps drawing them, or drawing x_t), `inner_steps` (adversarial inner
   iterations per step), `timesteps` (timesteps sampled per image, e.g. a Fisher estimate). Budget
   "published" caps nothing; "small" (BUDGETS) is the one used for the mini model on 2 CPU cores.
2. Strength ladder. Rungs r = 0..6. Every strength knob (Eraser.strength: option -> direction) moves with
   r from its published value: an `lr` knob is multiplied by 10^(r/2) (1, 3.16, 10, ... 1000: Adam moves a
   weight by about lr per step, so the lr sets how far a fixed step budget can go); an `up` knob (an erase
   or guidance scale) by 2^(r/2) (1, 1.41, 2, ... 8); a `down` knob is divided by 2^(r/2); a list knob (an
   ordered set of named configurations, weakest first) steps r // 2 places up from the published one.
   Integer knobs are rounded. Rung 0 is the published strength (under the budget caps).
3. Criterion. A rung passes when, on EVERY calibration concept, the share of images of the concept's
   held-out forget prompts (its task's forget.explicit set: scenes naming the concept that no method sees
   while erasing, which gets only the concept's name) in which the judge still finds it is <= 20%.
4. Search. Walk the rungs 0, 1, 2, ... in order and stop at the first that passes: the chosen rung is the
   smallest passing rung of the ladder. On a rung, concepts are evaluated in order and a concept that
   fails ends the rung (the others are measured later only if the fallback needs them).
5. Fallback. When no rung passes, every concept is measured on the coarse rungs 0, 2, 4, 6 and the one with
   the best trade-off is chosen: the largest mean over concepts of (retain - forgetting), where retain is
   the share of retain-prompt images drawn as asked (the judge checks each prompt's expected concepts);
   ties go to the lower rung. The preset marks such a method "best-tradeoff" (it did not reach 20%).
   A method with no strength knob is measured at rung 0 and marked "no-knob". Retain is measured where the
   rule or the report needs it: on the chosen rung, and on every coarse rung in the fallback.

Nothing is tuned on a test concept: given a bench config, a calibration concept that is a target of one
of its tasks is refused. Every (method, rung, concept) result is cached under the work folder by the hash
of everything it depends on, so an interrupted calibration resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

RULE = "ladder-v1"
THRESHOLD = 0.20
RUNGS = 7
COARSE = (0, 2, 4, 6)
LADDERS = {"lr": lambda r: 10 ** (r / 2), "scale": lambda r: 2 ** (r / 2)}
ROLES = ("steps", "epochs", "batch", "images", "images_small", "sample_steps", "inner_steps", "timesteps")
BUDGETS = {
    "published": {},
    # a small model on 2 CPU cores: every erasure in minutes (the limit: 10 minutes a method)
    "small": {"steps": 100, "images": 64, "images_small": 16, "sample_steps": 10, "inner_steps": 5,
              "timesteps": 25},
}
RULE_TEXT = [
    "budget: every cost knob capped at the budget's value for its role (steps groups by one ratio; epochs "
    "raised by the cut of their images, then held under the steps cap)",
    "ladder: rung r = 0..6; lr knobs x 10^(r/2); up knobs x 2^(r/2); down knobs / 2^(r/2); list knobs "
    "r // 2 places up; rung 0 = published strength",
    f"criterion: forgetting <= {THRESHOLD:.0%} on every calibration concept's held-out forget prompts "
    "(the judge finds the concept in at most that share of images)",
    "search: rungs 0, 1, 2, ... in order; the first passing rung is chosen (a concept that fails ends its rung)",
    "fallback: no passing rung -> of the coarse rungs 0, 2, 4, 6, every concept measured, the one with the "
    "largest mean over concepts of (retain - forgetting); ties to the lower rung; marked best-tradeoff",
]


# ------------------------------------------------------------------------------------------ the rule


def published(method, family: str | None = None) -> dict:
    """The method's published defaults, with its official defaults for the model's architecture family
    (Eraser.family_defaults, e.g. ESD's SDXL learning rate) where they differ."""
    out = {k: f.default for k, f in method.Config.model_fields.items()}
    return {**out, **(getattr(method, "family_defaults", {}) or {}).get(family, {})}


def knobs(method) -> tuple[dict, dict]:
    """(strength knobs, cost knobs) a method declares (Eraser.strength, Eraser.budget), checked: every knob is
    an option of the method, every direction and role is one the rule knows."""
    strength, cost = dict(getattr(method, "strength", {}) or {}), dict(getattr(method, "budget", {}) or {})
    fields = method.Config.model_fields
    for k, how in strength.items():
        if k not in fields or not (how in ("lr", "up", "down") or isinstance(how, (list, tuple))):
            raise ValueError(f"{method.name}.strength[{k!r}] = {how!r}: an option and one of lr, up, down, a list")
    for k, role in cost.items():
        if k not in fields or role.split(":")[0] not in ROLES or k in strength:
            raise ValueError(f"{method.name}.budget[{k!r}] = {role!r}: an option (not a strength knob) and a role "
                             f"of {ROLES}")
    return strength, cost


def method_family(method) -> str:
    """fine-tuning (an lr knob), closed-form or inference-time: which ladder its knobs climb."""
    strength, _ = knobs(method)
    if method.kind == "sampling":
        return "inference-time"
    return "fine-tuning" if "lr" in strength.values() else "closed-form"


def _cast(like, v):
    return int(round(v)) if isinstance(like, int) and not isinstance(like, bool) else float(f"{v:.4g}")


def budget_values(method, caps: dict, base: dict | None = None) -> dict:
    """The cost knobs' values under the budget caps (only the knobs a cap changes)."""
    base = base or published(method)
    _, cost = knobs(method)
    out = {}
    groups: dict[str, list[str]] = {}
    for k, role in cost.items():
        if role.split(":")[0] == "steps":
            groups.setdefault(role, []).append(k)
    if "steps" in caps:
        for ks in groups.values():
            top = max(base[k] for k in ks)
            ratio = min(1.0, caps["steps"] / top) if top else 1.0
            for k in ks:
                if ratio < 1:
                    out[k] = base[k] if base[k] == 0 else max(1, int(round(base[k] * ratio)))
    cut = 1.0
    for k, role in cost.items():
        if role in ("images", "images_small", "sample_steps", "inner_steps", "timesteps") and role in caps:
            if base[k] is not None and base[k] > caps[role]:
                out[k] = caps[role]
                if role == "images" and cut == 1.0:  # the first images knob: the data an epoch runs over
                    cut = base[k] / caps[role]
    for k, role in cost.items():
        if role == "epochs" and "steps" in caps:
            img = next((x for x, r in cost.items() if r == "images"), None)
            batch = next((x for x, r in cost.items() if r == "batch"), None)
            n_img = out.get(img, base.get(img)) if img else None
            per_epoch = math.ceil(n_img / base[batch]) if n_img and batch else 1
            e = max(1, int(round(base[k] * cut)))
            e = min(e, max(1, caps["steps"] // per_epoch))
            if e != base[k]:
                out[k] = e
    return out


def rung_values(method, r: int, base: dict | None = None) -> dict:
    """The strength knobs' values at rung r."""
    base = base or published(method)
    strength, _ = knobs(method)
    out = {}
    for k, how in strength.items():
        v = base[k]
        if isinstance(how, (list, tuple)):
            i = list(how).index(v) if v in how else 0
            out[k] = how[min(i + r // 2, len(how) - 1)]
        elif how == "lr":
            out[k] = _cast(v, v * LADDERS["lr"](r))
        elif how == "up":
            out[k] = _cast(v, v * LADDERS["scale"](r))
        elif how == "down":
            out[k] = _cast(v, v / LADDERS["scale"](r))
        else:
            raise ValueError(f"{method.name}.strength[{k!r}] = {how!r}: not lr, up, down or a list")
    return out


def multiplier(method, r: int) -> float:
    strength, _ = knobs(method)
    return LADDERS["lr" if "lr" in strength.values() else "scale"](r)


def passes(res: dict) -> bool:
    return res["forgetting"] <= THRESHOLD + 1e-12


def tradeoff(rows: dict) -> float:
    return sum(r["retain"] - r["forgetting"] for r in rows.values()) / len(rows)


def choose(evaluate, concepts: list[str], has_knob: bool, retain=None) -> tuple[int, str, dict]:
    """Run the search with `evaluate(rung, concept) -> {"forgetting", ...}` (None: the rung's options are
    invalid) and `retain(rung, concept) -> {"retain", ...}` (measured only where the rule needs it: on the
    chosen rung, and on every coarse rung for the fallback). Returns (chosen rung, status,
    {rung: {concept: result}})."""
    seen: dict[int, dict] = {}
    retain = retain or (lambda r, c: {})

    def run(r, all_concepts=False):
        rows = seen.setdefault(r, {})
        for c in concepts:
            if c not in rows:
                res = evaluate(r, c)
                if res is None:
                    return None
                rows[c] = dict(res)
            if not passes(rows[c]) and not all_concepts:
                return False
        return all(passes(rows[c]) for c in concepts)

    def with_retain(r):
        for c in concepts:
            if "retain" not in seen[r][c]:
                seen[r][c].update(retain(r, c))
        return r

    if not has_knob:
        run(0, all_concepts=True)
        return with_retain(0), "no-knob", seen
    for r in range(RUNGS):
        ok = run(r)
        if ok is None:
            seen.pop(r, None)
            break
        if ok:
            return with_retain(r), "reached", seen
    full = []
    for r in COARSE:
        if r in seen and run(r, all_concepts=True) is not None:
            full.append(with_retain(r))
    if not full:
        raise UserError("no rung of the ladder gives valid options for this method")
    best = max(full, key=lambda r: (tradeoff(seen[r]), -r))
    return best, "best-tradeoff", seen


# ------------------------------------------------------------------------------------------ running it


@dataclass
class Entry:
    label: str
    method: str
    fixed: dict = field(default_factory=dict)


@dataclass
class CalibrationSetup:
    model: str
    entries: list[Entry]
    concepts: list[str]
    budget: str = "published"
    images_per_prompt: int = 1
    max_prompts: int | None = None  # per prompt set (forget.explicit and each retain group); None: all
    seed: int = 0
    clip: str | None = None
    bench_config: str | None = None
    work: Path | None = None


def calibration_tasks(concepts: list[str], model: str, clip: str | None, n: int, max_prompts: int | None):
    """concept -> Task: a task spec (file or source:name) as it is, else the planner's task for the model's
    world (the mini world: renderer prompts, the mini detector as judge)."""
    from ..tasks import load_task, task_sources
    from ..tasks.planner import plan, planner_world

    out = {}
    for c in concepts:
        prefix, sep, _ = c.partition(":")
        if (sep and prefix in task_sources()) or Path(c).suffix in (".yaml", ".yml", ".json"):
            task = load_task(c)
        else:
            world = model if planner_world(model) is not None else None
            if world is None and clip is None:
                raise UserError(f"calibration concept {c!r}: model {model!r} has no planner world; give a task file "
                                "(--concepts path/to/task.yaml) or --clip clip:PATH for the planner's CLIP judges")
            task = plan(c, model=world or model, clip=clip)[0]
        if len(task.targets) != 1:
            raise UserError(f"calibration concept {c!r}: its task has {len(task.targets)} targets; give one each")
        task.images_per_prompt = n
        task.attack.prompts = 0
        if max_prompts:
            task.prompts = {w: {g: recs[:max_prompts] for g, recs in groups.items()}
                            for w, groups in task.prompts.items()}
        out[task.targets[0]] = task
    if len(out) != len(concepts):
        raise UserError("the calibration concepts repeat a concept")
    return out


def test_concepts(bench_config: str) -> dict[str, str]:
    """target concept -> task name, for every task of a bench config."""
    from ..tasks import load_task
    from .config import _task_path, load_config

    cfg, _ = load_config(Path(bench_config))
    out = {}
    for t in cfg.tasks:
        task = load_task(_task_path(t, Path(bench_config).parent))
        for tg in task.targets:
            out[tg.strip().lower()] = task.name
    return out


def check_disjoint(tasks: dict, bench_config: str | None) -> dict:
    if bench_config is None:
        return {"bench_config": None, "concepts": [], "note": "not checked: no --bench-config given"}
    tests = test_concepts(bench_config)
    for c, task in tasks.items():
        if c.strip().lower() in tests:
            raise UserError(f"calibration concept {c!r} is a test concept of bench config {bench_config} (task "
                            f"{tests[c.strip().lower()]}); calibrate on concepts the benchmark does not test")
    return {"bench_config": str(bench_config), "concepts": sorted(tests)}


def entries_from(names: list[str], bench_config: str | None) -> list[Entry]:
    """Method entries: a label of the bench config's methods (with its `set` as fixed options), or a
    registered method name."""
    from ..methods import REGISTRY

    labels = {}
    if bench_config:
        from .config import load_config

        cfg, _ = load_config(Path(bench_config))
        labels = {m.label: m for m in cfg.methods}
    out = []
    for n in names or (list(labels) or sorted(REGISTRY)):
        if n in labels:
            m = labels[n]
            out.append(Entry(n, m.method, dict(m.set)))
        elif n in REGISTRY:
            out.append(Entry(n, n, {}))
        else:
            raise UserError(f"unknown method {n!r}; methods: {', '.join(sorted(REGISTRY))}"
                            + (f"; bench config labels: {', '.join(labels)}" if labels else ""))
    if len({e.label for e in out}) != len(out):
        raise UserError("--methods repeats a method")
    for e in out:
        method = REGISTRY[e.method]
        strength, cost = knobs(method)
        clash = sorted(set(e.fixed) & (set(strength) | set(cost)))
        if clash:
            raise UserError(f"method entry {e.label!r} fixes {clash[0]!r}, a knob the calibration sets; drop it")
    return out


def _sha(obj) -> str:
    from .config import sha

    return sha(obj)


def set_args(values: dict) -> list[str]:
    from .config import set_args as _set_args

    return _set_args(values)


class Calibrator:
    def __init__(self, setup: CalibrationSetup, echo=print, progress=None):
        from ..evaluation.cache import Cache, default_root
        from ..models.load import model_hash, resolve_model

        if setup.budget not in BUDGETS:
            raise UserError(f"unknown --budget {setup.budget!r}; budgets: {', '.join(BUDGETS)}")
        if setup.images_per_prompt < 1:
            raise UserError(f"-n must be at least 1, got {setup.images_per_prompt}")
        if len(setup.concepts) < 1:
            raise UserError("give at least one calibration concept (--concepts square,dotted)")
        self.s, self.echo, self.progress = setup, echo, progress
        self.fp = model_hash(resolve_model(setup.model))
        self.family = _family(setup.model)
        self.tasks = calibration_tasks(setup.concepts, setup.model, setup.clip, setup.images_per_prompt,
                                       setup.max_prompts)
        self.excluded = check_disjoint(self.tasks, setup.bench_config)
        self.work = Path(setup.work) if setup.work else default_root() / "calibrate" / self.fp[:16]
        self.cache = Cache(self.work / "cache")
        self.caps = BUDGETS[setup.budget]

    # one (entry, rung, concept): erase, evaluate forgetting and preservation; cached as JSON
    def measure(self, entry: Entry, values: dict, concept: str, aspect: str = "forgetting") -> dict:
        """Erase (once) and measure one aspect: "forgetting" (share of held-out forget images showing the
        concept) or "preservation" (share of retain images drawn as asked). Cached as JSON per aspect."""
        from .. import __version__
        from ..artifacts import is_artifact
        from ..erase import run_erase
        from ..evaluation.evaluate import EvalConfig, evaluate
        from ..generate import GenSettings
        from ..utils.io import atomic_path

        task = self.tasks[concept]
        key = _sha({"model": self.fp, "method": entry.method, "options": {**values, **entry.fixed},
                    "task": task.model_dump(mode="json"), "seed": self.s.seed, "igmu": __version__})[:20]
        cell = self.work / "cells" / key
        done = cell / f"{aspect}.json"
        if done.is_file():
            return json.loads(done.read_text())
        art = cell / "artifact"
        if not is_artifact(art):  # kept: the retain figures may be asked for later
            prog = self.progress(f"erasing ({entry.label}, {concept})") if self.progress else None
            run_erase(self.s.model, entry.method, list(task.targets), task.anchor, list(task.preserve), None,
                      set_args({**values, **entry.fixed}), art, prog)
        res = evaluate(self.s.model, str(art), task, EvalConfig(aspects=[aspect], clip=self.s.clip,
                                                                settings=GenSettings(), seed=self.s.seed),
                       self.cache, (lambda total, desc: self.progress(desc)(total)) if self.progress else None)
        agg = res["aggregates"]
        if aspect == "forgetting":
            manifest = json.loads((art / "manifest.json").read_text())
            out = {"forgetting": _r(agg["forgetting"]["target_shown"]["value"]),
                   "forgetting_original": _r(agg["forgetting"]["target_shown_original"]["value"]),
                   "n_forget": agg["forgetting"]["target_shown"]["n"],
                   "erase_seconds": manifest["cost"]["erase_seconds"]}
        else:
            p = agg["preservation"]
            out = {"retain": _r(p["as_expected"]["value"]), "retain_original": _r(p["as_expected_original"]["value"]),
                   "n_retain": p["as_expected"]["n"]}
            if "carrier_kept" in p:
                out["carrier_kept"] = _r(p["carrier_kept"]["value"])
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps(out, indent=1))
        return out

    def calibrate_entry(self, entry: Entry, index: int, total: int) -> dict:
        from ..methods import REGISTRY
        from ..methods.base import parse_config

        method = REGISTRY[entry.method]()
        base = published(method, self.family)
        strength, cost = knobs(method)
        budget = budget_values(method, self.caps, base)
        concepts = list(self.tasks)

        def values_at(r):
            return {**budget, **rung_values(method, r, base)}

        def evaluate(r, concept):
            vals = values_at(r)
            try:
                parse_config(method, None, set_args({**vals, **entry.fixed}))
            except UserError as e:
                self.echo(f"[{index}/{total}] {entry.label} rung {r}: invalid options ({e}); the ladder stops here")
                return None
            t0 = time.perf_counter()
            res = self.measure(entry, vals, concept)
            self.echo(f"[{index}/{total}] {entry.label} rung {r} ({_fmt(rung_values(method, r, base))}) {concept}: "
                      f"forgetting {res['forgetting']:.0%} (n={res['n_forget']}) [{time.perf_counter() - t0:.0f} s]")
            return res

        def retain(r, concept):
            res = self.measure(entry, values_at(r), concept, "preservation")
            self.echo(f"[{index}/{total}] {entry.label} rung {r} {concept}: retain {res['retain']:.0%} "
                      f"(n={res['n_retain']})")
            return res

        rung, status, seen = choose(evaluate, concepts, bool(strength), retain)
        rungs = []
        for r in sorted(seen):
            rows = seen[r]
            rungs.append({"rung": r, "multiplier": float(f"{multiplier(method, r):.4g}"),
                          "values": rung_values(method, r, base),
                          "passed": all(c in rows and passes(rows[c]) for c in concepts),
                          "concepts": {c: rows.get(c, "not measured: the rung had already failed") for c in concepts}})
        if status == "reached":  # the chosen rung must have passed with every figure
            assert all("retain" in seen[rung][c] for c in concepts)
        chosen = values_at(rung)
        return {"method": entry.method, "fixed": entry.fixed, "family": method_family(method),
                "strength_knobs": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in strength.items()},
                "cost_knobs": cost,
                "published": {k: base[k] for k in list(strength) + list(cost)},
                "set": {k: v for k, v in chosen.items()}, "status": status, "rung": rung,
                "multiplier": float(f"{multiplier(method, rung):.4g}"), "rungs": rungs}

    def provenance(self) -> dict:
        from .. import __version__
        from ..evaluation.judges import get_judge

        judges = {}
        for c, t in self.tasks.items():
            j = get_judge(t.judge)
            judges[t.judge] = {k: v for k, v in j.card.items() if isinstance(v, (str, int, float, bool))}
        return {
            "rule": {"name": RULE, "threshold": THRESHOLD, "rungs": RUNGS, "coarse": list(COARSE),
                     "ladders": {"lr": [float(f"{LADDERS['lr'](r):.4g}") for r in range(RUNGS)],
                                 "scale": [float(f"{LADDERS['scale'](r):.4g}") for r in range(RUNGS)]},
                     "text": RULE_TEXT, "budget": {"name": self.s.budget, "caps": self.caps},
                     "defined_in": "igmu/bench/calibrate.py (module docstring)"},
            "calibration": {
                "concepts": list(self.tasks),
                "tasks": {c: {"name": t.name, "kind": t.category.kind, "anchor": t.anchor, "judge": t.judge,
                              "forget_prompts": len(t.forget()["explicit"]),
                              "retain_prompts": sum(len(v) for v in t.retain().values())}
                          for c, t in self.tasks.items()},
                "images_per_prompt": self.s.images_per_prompt, "max_prompts": self.s.max_prompts,
                "held_out": "forget: the task's forget.explicit prompts (the erasure sees only the concept's name); "
                            "retain: every retain group",
                "sampling": {"steps": 20, "guidance": 5.0}, "seed": self.s.seed, "judges": judges,
                "test_concepts_excluded": self.excluded},
            "architecture": self.family,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "igmu_version": __version__,
        }


def _family(model: str) -> str:
    """The model's architecture family (diffusion.arch: sd, sdxl, sd3, flux)."""
    from ..artifacts import load_model
    from ..diffusion.arch import adapter_for

    return adapter_for(load_model(model)).family


def _r(x: float) -> float:
    return round(float(x), 4)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "no knob"


def _compatible(old: dict, new: dict) -> bool:
    keys = ("rule", "calibration")
    strip = lambda d: json.loads(json.dumps({k: d.get(k) for k in keys}))  # noqa: E731
    a, b = strip(old), strip(new)
    for d in (a, b):
        d["calibration"] = {k: v for k, v in (d["calibration"] or {}).items() if k != "judges"}
    return a == b


def run_calibration(setup: CalibrationSetup, out: Path, echo=print, progress=None, parallel: int = 1,
                    threads: int | None = None) -> dict:
    """Calibrate every entry and write the preset file `out` (atomically, after each method, so an interrupted
    run keeps what is done). An existing preset of the same model, rule and calibration settings is
    extended: entries calibrated again are replaced, the others kept. parallel > 1 calibrates that many
    methods at once, each in its own process with `threads` threads (default: the cores / parallel), through
    the bench's local slots; the per-rung results are those of one method at a time at the same thread count
    (methods share nothing but the cache of the original model's images, which is locked)."""
    import yaml

    from ..presets import FORMAT, VERSION, read_preset
    from ..utils.io import atomic_path

    out = Path(out)
    cal = Calibrator(setup, echo, progress)
    prov = cal.provenance()
    methods: dict = {}
    if out.exists():
        old = read_preset(out)
        if old["model_fingerprint"] != cal.fp or not _compatible(old, prov):
            raise UserError(f"--out {out} is a preset of another model or other calibration settings; choose "
                            "a new file")
        methods = dict(old["methods"])
    order = list(methods) + [e.label for e in setup.entries]  # the file's order whatever order methods end in
    total = len(setup.entries)

    def finished(index: int, label: str, entry: dict):
        methods[label] = entry
        echo(f"[{index}/{total}] {label}: {entry['status']} at rung {entry['rung']} ({_fmt(entry['set'])})")
        doc = {"format": FORMAT, "version": VERSION, "model": setup.model, "model_fingerprint": cal.fp, **prov,
               "methods": {k: methods[k] for k in dict.fromkeys(order) if k in methods}}
        with atomic_path(out) as tmp:
            tmp.write_text(HEADER + yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True))

    slots = max(1, min(int(parallel), total))
    echo(f"calibrating {total} methods on {', '.join(cal.tasks)} ({setup.model}, budget {setup.budget}, rule "
         f"{RULE}); work folder {cal.work}" + (f"; {slots} methods at once" if slots > 1 else ""))
    if slots > 1:
        from functools import partial

        from ..utils.threads import thread_env
        from .runner import local_slots, run_in_slots

        slots, per = local_slots(total, 1, slots, threads)

        class Tracker:
            def queued(self, n):
                pass

            def finished(self, item, entry, _running):
                finished(item["index"], item["id"], entry)

        items = [{"id": e.label, "index": i, "entry": e} for i, e in enumerate(setup.entries, 1)]
        run_in_slots(items, partial(_calibrate_item, setup=setup, total=total), [thread_env(per)] * slots,
                     Tracker(), describe=_entry_words)
    else:
        for i, e in enumerate(setup.entries, 1):
            finished(i, e.label, cal.calibrate_entry(e, i, total))
    return {"out": str(out), "methods": total}


_WORKER: list = []  # a worker process's Calibrator (a worker serves one run_calibration)


def _calibrate_item(item: dict, setup: CalibrationSetup, total: int) -> dict:
    """One method in a worker process of run_calibration(parallel > 1); its lines go to stderr."""
    import sys

    if not _WORKER:  # its tasks and model fingerprint are read once per worker
        _WORKER.append(Calibrator(setup, lambda m: print(m, file=sys.stderr, flush=True)))
    return _WORKER[0].calibrate_entry(item["entry"], item["index"], total)


def _entry_words(item: dict) -> str:
    return f"calibrating {item['id']}"


HEADER = ("# igmu preset: written by `igmu calibrate` (igmu/bench/calibrate.py holds the rule). Each method's `set` is\n"
          "# what `igmu erase --preset THIS_FILE` and bench configs (`preset:`) apply under --config / --set; the\n"
          "# rest is provenance: the published values, the rungs walked and their figures. Do not edit by hand.\n")
