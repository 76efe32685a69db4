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
                 steps: 20, guidance: 5.0, judge: null, clip: null}
    resources: {cpus: 1, gpus: 0}  # what one cell asks for: threads, and GPUs (local backend and Ray)
    device: auto                   # auto: a cell with resources.gpus > 0 runs on CUDA, else on the CPU
    dtype: auto                    # auto, float32, float16, bfloat16 (auto: float32 on CPU, bf16/fp16 on GPU)
    gradient_checkpointing: false  # fine-tuning methods
"""
from __future__ import annotations

import hashlib
import json
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


def load_config(path: Path) -> tuple[BenchConfig, dict]:
    """The validated config and its raw mapping; every mistake is one line naming the field or name."""
    from ..evaluation.evaluate import EvalConfig, check_aspects, check_eval_specs, eval_seed_span
    from ..methods import REGISTRY, get_method
    from ..methods.base import parse_config
    from ..tasks import load_task

    path = Path(path)
    raw = load_mapping(path, "bench config")
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
    for t in cfg.tasks:
        try:
            task = load_task(_task_path(t, base))
        except UserError as e:
            raise UserError(f"bench config {path}: task {t!r}: {e}") from None
        if ev.images_per_prompt is not None:
            task.images_per_prompt = ev.images_per_prompt
        if ev.attack_prompts is not None:
            task.attack.prompts = ev.attack_prompts
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


def _task_path(spec: str, base: Path) -> str:
    if spec.startswith("mini:"):
        return spec
    p = Path(spec)
    return str(p if p.is_absolute() or p.exists() else base / p)


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
