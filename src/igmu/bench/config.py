"""Benchmark configuration: methods x tasks x seeds, validated before anything runs.

    name: mini
    model: mini
    preset: ../presets/mini.yaml   # optional: every method's options from this preset (igmu calibrate), or
                                   #   "published" (the methods' published defaults; also the default)
    methods:                       # a name, or {label, method, set, preset}
      - uce
      - {label: esd-x, method: esd, set: {train_method: xattn}}
      - {label: esd-x-published, method: esd, preset: published}   # a per-method preset overrides the top one
    tasks: [mini:object-circle, tasks/mini/style-striped.yaml]
    seeds: [0]
    aspects: [forgetting, preservation, quality, alignment, robustness]
    evaluation: {images_per_prompt: 2, attack_prompts: 2, attacks: [unlearndiffatk:fast, ringabell:fast],
                 steps: 20, guidance: 5.0, judge: null, clip: null,
                 min_forget_images: 32, min_retain_images: 16}   # floors: images per prompt raised per task
    resources: {cpus: 1, gpus: 0}  # what one cell asks for: threads, and GPUs (local backend and Ray)
    device: auto                   # auto: a cell with resources.gpus > 0 runs on CUDA, else on the CPU
    dtype: auto                    # auto, float32, float16, bfloat16 (auto: float32 on CPU, bf16/fp16 on GPU)
    gradient_checkpointing: false  # fine-tuning methods
    igmu_dataset: ${IGMU_DATASET}  # tasks igmu:KEY (the IGMU paper's released prompts, tasks/released.py): the IGMU
                                   #   repository's dataset/ folder, holding Benchmarking_prompts/{forgot,retain}.json
    igmu_prompts_per_group: null   # igmu:KEY tasks: only the first N prompts of every group (null: all)
    task_judges: {object_church: clip-head:judges/object_church}   # a task's judge, by task name (default: the task's)
    cell_seconds: timings/mini.yaml  # optional: measured seconds per cell (scripts/cell_seconds.py); cells then
                                   #   start longest first, so no long cell runs alone at the end

Overrides: `igmu bench --set KEY=VALUE` (repeatable) sets one field before validation; KEY is a dotted path
(evaluation.images_per_prompt, task_judges.nudity), and an entry of `methods` is addressed by its label
(methods.esd.set.iterations=2); VALUE is read as YAML (2, null, [uce, esd]). Environment: `${NAME}` inside any
string is replaced by the variable NAME (unset: one line naming the field, the variable and the --set to use).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import UserError
from ..utils.validate import SEED_MAX, check_seed, load_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MethodEntry(_Strict):
    label: str
    method: str
    set: dict = Field(default_factory=dict)
    preset: str | None = None  # a preset file (relative to the config) or "published"; default: the config's


class EvalSettings(_Strict):
    images_per_prompt: int | None = Field(None, ge=1, le=10_000)  # default: each task's
    # evidence floors: a task's images per prompt is raised until its explicit forget set has at least
    # min_forget_images images and every retain group at least min_retain_images (None: no floor)
    min_forget_images: int | None = Field(None, ge=1, le=100_000)
    min_retain_images: int | None = Field(None, ge=1, le=100_000)
    attack_prompts: int | None = Field(None, ge=0, le=10_000)  # default: each task's
    attacks: list[str] | None = None  # "name:budget" items of the robustness aspect; default: each task's
    steps: int = Field(20, ge=1, le=1000)  # bounds as generate.MAX_STEPS / MAX_GUIDANCE
    guidance: float = Field(5.0, ge=0, le=100)
    judge: str | None = None
    clip: str | None = None  # CLIP score model; None: decided from the images (the mini world's on its own)
    features: str | None = None  # FID/KID features; None: decided from the images
    perceptual: str | None = None  # perceptual distance; None: decided from the images
    fid_weights: str | None = None  # local FID Inception weights
    lpips_weights: str | None = None  # local torchvision backbone weights for LPIPS


class Resources(_Strict):
    cpus: float = Field(1, gt=0, le=4096)
    gpus: float = Field(0, ge=0, le=1024)


class BenchConfig(_Strict):
    name: str = "bench"
    model: str = "mini"
    preset: str | None = None  # a preset file (relative to the config) or "published"; None: published defaults
    methods: list[MethodEntry] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=SEED_MAX)]] = Field(default_factory=lambda: [0], min_length=1,
                                                                   max_length=10_000)
    aspects: list[str] = Field(default_factory=lambda: ["forgetting", "preservation", "quality", "alignment",
                                                        "robustness"])
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    resources: Resources = Field(default_factory=Resources)
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    igmu_dataset: str | None = None  # IGMU's dataset/ folder, for tasks igmu:KEY
    igmu_prompts_per_group: int | None = Field(None, ge=1, le=100_000)
    task_judges: dict[str, str] = Field(default_factory=dict)  # task name -> judge spec
    cell_seconds: str | None = None  # a cell-seconds file (relative to the config): the order cells start in

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v.strip().lower()):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v.strip().lower()

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v.strip().lower() not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError("dtype must be auto, float32, float16 or bfloat16")
        return v.strip().lower()

    def runtime_key(self) -> dict:
        """What a cell's id adds for its precision: nothing at the defaults (so existing cells keep their ids)."""
        keys = {"device": self.device, "dtype": self.dtype, "gradient_checkpointing": self.gradient_checkpointing}
        return {} if (self.device, self.dtype, self.gradient_checkpointing) == ("auto", "auto", False) else keys

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v):
        if not isinstance(v, list):
            return v
        return [{"label": m, "method": m} if isinstance(m, str) else
                ({"label": m.get("label", m.get("method")), **m} if isinstance(m, dict) else m) for m in v]


_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def apply_overrides(raw: dict, overrides: list[str] | None, where: str) -> dict:
    """`--set KEY=VALUE` items applied to the raw config mapping (a copy): KEY a dotted path, an entry of
    `methods` addressed by its label, VALUE read as YAML. One line for a malformed item or a path that
    does not lead into a mapping."""
    import copy

    import yaml

    raw = copy.deepcopy(raw)
    for item in overrides or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise UserError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. --set model=PATH or "
                            "--set evaluation.images_per_prompt=1")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = raw
        for n, part in enumerate(parts[:-1]):
            if isinstance(node, list) and parts[n - 1] == "methods" and n == 1:
                node = _method_entry(node, part, item, where)
                continue
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None and isinstance(node, dict):
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise UserError(f"--set {item!r}: {'.'.join(parts[:n + 1])} of {where} is not a mapping")
            node = nxt
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {'.'.join(parts[:-1])} of {where} is not a mapping")
        node[parts[-1]] = value
    return raw


def _method_entry(methods: list, label: str, item: str, where: str) -> dict:
    """The `methods` entry of a label, turned into its mapping form in place (a bare name: {label, method})."""
    for i, m in enumerate(methods):
        name = m if isinstance(m, str) else (m.get("label", m.get("method")) if isinstance(m, dict) else None)
        if name == label:
            if isinstance(m, str):
                methods[i] = {"label": m, "method": m}
            return methods[i]
    names = [m if isinstance(m, str) else m.get("label", m.get("method")) for m in methods if isinstance(m, (str, dict))]
    raise UserError(f"--set {item!r}: {where} has no method labelled {label!r} (labels: {', '.join(map(str, names))})")


def expand_env(raw, where: str, path: str = ""):
    """Every `${NAME}` inside a string replaced by the environment variable NAME; unset or empty: one line."""
    import os

    if isinstance(raw, dict):
        return {k: expand_env(v, where, f"{path}.{k}" if path else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_env(v, where, f"{path}.{i}") for i, v in enumerate(raw)]
    if not isinstance(raw, str):
        return raw

    def sub(m):
        value = os.environ.get(m.group(1), "").strip()
        if not value:
            raise UserError(f"{where}: {path} is {raw!r} but {m.group(1)} is not set; export {m.group(1)}=... or pass "
                            f"--set {path}=...")
        return value
    return _VAR.sub(sub, raw)


def bench_task(cfg: BenchConfig, spec: str, base: Path, evaluation: bool = True):
    """A task of the config: a task file or source (relative to the config), or igmu:KEY (the IGMU paper's
    released prompts from cfg.igmu_dataset); with the config's judge for it (task_judges) and, with
    `evaluation`, the evaluation's images_per_prompt and attack_prompts (a cell's id hashes the task
    without them: they are hashed with the evaluation settings)."""
    from ..tasks import load_task
    from ..tasks.released import released_task

    if spec.startswith("igmu:"):
        if not cfg.igmu_dataset:
            raise UserError(f"task {spec!r} reads the IGMU paper's released prompts: set igmu_dataset (--set "
                            "igmu_dataset=PATH or IGMU_DATASET=PATH: the IGMU repository's dataset/ folder)")
        task = released_task(spec[5:], cfg.igmu_dataset, prompts_per_group=cfg.igmu_prompts_per_group)
    else:
        task = load_task(_task_path(spec, base))
    if task.name in cfg.task_judges:
        task.judge = cfg.task_judges[task.name]
    if evaluation:
        ev = cfg.evaluation
        if ev.images_per_prompt is not None:
            task.images_per_prompt = ev.images_per_prompt
        if ev.attack_prompts is not None:
            task.attack.prompts = ev.attack_prompts
        task.images_per_prompt = images_for_floors(task, ev.min_forget_images, ev.min_retain_images)
    return task


def images_for_floors(task, min_forget: int | None, min_retain: int | None) -> int:
    """The task's images per prompt, raised (never lowered) until its explicit forget prompts give at least
    `min_forget` images and each retain group at least `min_retain` (a task's groups differ in size, so one
    number per task meets the floors with the fewest images)."""
    need = [task.images_per_prompt]
    explicit = task.forget().get("explicit") or []
    if min_forget and explicit:
        need.append(math.ceil(min_forget / len(explicit)))
    if min_retain:
        need += [math.ceil(min_retain / len(recs)) for recs in task.retain().values() if recs]
    return max(need)


def evaluation_key(ev: EvalSettings) -> dict:
    """The evaluation settings a cell's id hashes: the floors only where set (so cells of configs without
    them keep their ids)."""
    d = ev.model_dump()
    for k in ("min_forget_images", "min_retain_images"):
        if d[k] is None:
            del d[k]
    return d


def load_extended(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A bench config's mapping with `extends: OTHER.yaml` resolved: the other config's fields, each one the
    file itself gives replacing it whole (a variant names only what differs, e.g. its name, tasks or seeds).
    The other config must lie in the same folder, so relative task and preset paths mean the same in both."""
    path = Path(path)
    raw = load_mapping(path, "bench config")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    where = f"bench config {path}"
    if not isinstance(parent, str) or Path(parent).name != parent:
        raise UserError(f"{where}: extends must name a config file in the same folder (e.g. extends: mini.yaml), "
                        f"got {parent!r}")
    target = path.parent / parent
    if target.resolve() in {p.resolve() for p in (*seen, path)}:
        raise UserError(f"{where}: extends {parent!r} loops back to a config already being extended; remove the loop")
    if not target.is_file():
        raise UserError(f"{where}: extends {parent!r}, which is not a file in {path.parent}; fix the name")
    return {**load_extended(target, (*seen, path)), **raw}


def load_config(path: Path, overrides: list[str] | None = None) -> tuple[BenchConfig, dict]:
    """The validated config and its raw mapping (after --set overrides and ${NAME} expansion); every mistake
    is one line naming the field or name."""
    from ..evaluation.evaluate import EvalConfig, check_aspects, check_eval_specs, eval_seed_span
    from ..methods import REGISTRY, get_method
    from ..methods.base import parse_config

    path = Path(path)
    where = f"bench config {path}"
    raw = expand_env(apply_overrides(load_extended(path), overrides, where), where)
    try:
        cfg = BenchConfig(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        what = {"extra_forbidden": "unknown field", "missing": "missing field"}.get(err["type"], "bad value for")
        raise UserError(f"bench config {path}: {what} {loc!r}" + ("" if what != "bad value for" else f": {err['msg']}")) \
            from None
    labels = [m.label for m in cfg.methods]
    if len(set(labels)) != len(labels):
        raise UserError(f"bench config {path}: method labels must be unique; repeated: "
                        f"{sorted({x for x in labels if labels.count(x) > 1})[0]!r}")
    base = path.parent
    for m in cfg.methods:
        if m.method not in REGISTRY:
            raise UserError(f"bench config {path}: unknown method {m.method!r}; available: {', '.join(sorted(REGISTRY))}")
        try:
            choice = method_preset(cfg, m, base)
            parse_config(get_method(m.method), None, set_args(m.set), choice.values if choice else None)
        except UserError as e:
            raise UserError(f"bench config {path}: method {m.label!r}: {e}") from None
    ev = cfg.evaluation
    names = []
    for t in cfg.tasks:
        try:
            task = bench_task(cfg, t, base)
        except UserError as e:
            raise UserError(f"bench config {path}: task {t!r}: {e}") from None
        names.append(task.name)
        for s in cfg.seeds:
            try:
                check_seed(s, "seed", eval_seed_span(task))
            except UserError as e:
                raise UserError(f"bench config {path}: task {t!r}: {e}") from None
        try:  # what each cell's evaluation would refuse after its erasure: refused now
            check_eval_specs(EvalConfig(aspects=check_aspects(cfg.aspects), judge=ev.judge, clip=ev.clip,
                                        features=ev.features, perceptual=ev.perceptual, fid_weights=ev.fid_weights,
                                        lpips_weights=ev.lpips_weights), task,
                             {"original": cfg.model, "unlearned": cfg.model})
        except UserError as e:
            raise UserError(f"bench config {path}: task {t!r}: {e}") from None
    unknown = sorted(set(cfg.task_judges) - set(names))
    if unknown:
        raise UserError(f"bench config {path}: task_judges names task {unknown[0]!r}, which is not among its tasks "
                        f"({', '.join(names)})")
    if cfg.cell_seconds is not None:
        expected_seconds(cfg, base)
    if cfg.evaluation.attacks is not None:
        from ..attacks.base import parse_attack_specs

        try:
            parse_attack_specs(cfg.evaluation.attacks)
        except UserError as e:
            raise UserError(f"bench config {path}: evaluation.attacks: {e}") from None
    return cfg, raw


def set_args(values: dict) -> list[str]:
    """A method entry's `set` mapping as --set key=value strings."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def method_preset(cfg: BenchConfig, m: MethodEntry, base: Path, fingerprint: str | None = None):
    """The presets.PresetChoice of one method entry (its own preset, else the config's), checked against the
    config's model; None when neither names one."""
    from ..methods import get_method
    from ..methods.base import option_values
    from ..presets import PUBLISHED, resolve_preset

    spec = m.preset if m.preset is not None else cfg.preset
    if spec is None:
        return None
    if spec.strip() != PUBLISHED and not Path(spec).is_absolute():
        spec = str(base / spec)
    method = get_method(m.method)
    return resolve_preset(spec, cfg.model, method, option_values(method, None, set_args(m.set)), fingerprint)


def expected_seconds(cfg: BenchConfig, base: Path) -> dict[str, dict[str, float]]:
    """The config's cell-seconds file ({method label: {task name: seconds}}, as scripts/cell_seconds.py writes
    it from a finished bench folder); {} without one. A broken file is one line."""
    if cfg.cell_seconds is None:
        return {}
    path = Path(cfg.cell_seconds)
    path = path if path.is_absolute() else base / path
    where = f"cell_seconds {cfg.cell_seconds!r}"
    if not path.is_file():
        raise UserError(f"{where}: no such file (the path is relative to the config's folder); write one with "
                        "scripts/cell_seconds.py or drop the field")
    table = load_mapping(path, "cell-seconds file").get("seconds")
    ok = isinstance(table, dict) and all(
        isinstance(v, dict) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0
                                    for x in v.values()) for v in table.values())
    if not ok:
        raise UserError(f"{where}: expected `seconds: {{LABEL: {{TASK: SECONDS}}}}` with non-negative numbers; "
                        "rewrite it with scripts/cell_seconds.py")
    return {str(k): {str(t): float(x) for t, x in v.items()} for k, v in table.items()}


def _task_path(spec: str, base: Path) -> str:
    if spec.startswith("mini:"):
        return spec
    p = Path(spec)
    return str(p if p.is_absolute() or p.exists() else base / p)


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
