"""Benchmark configuration: methods x tasks x seeds, validated before anything runs.

    name: mini
    model: mini
    methods:                       # a name, or {label, method, set}
      - uce
      - {label: esd-x, method: esd, set: {train_method: xattn}}
    tasks: [mini:object-circle, tasks/mini/style-striped.yaml]
    seeds: [0]
    aspects: [forgetting, preservation, quality, alignment, robustness]
    evaluation: {images_per_prompt: 2, attack_prompts: 2, attacks: [unlearndiffatk:fast, ringabell:fast],
                 steps: 20, guidance: 5.0, judge: null, clip: null}
    resources: {cpus: 1, gpus: 0}  # what one cell asks of the Ray backend
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import UserError
from ..utils.io import read_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    label: str
    method: str
    set: dict = Field(default_factory=dict)


class EvalSettings(_Strict):
    images_per_prompt: int | None = Field(None, ge=1)  # default: each task's
    attack_prompts: int | None = Field(None, ge=0)  # default: each task's
    attacks: list[str] | None = None  # "name:budget" items of the robustness aspect; default: each task's
    steps: int = Field(20, ge=1)
    guidance: float = Field(5.0, ge=0)
    judge: str | None = None
    clip: str | None = None  # CLIP score model; None: decided from the images (the mini world's on its own)
    features: str | None = None  # FID/KID features; None: decided from the images
    perceptual: str | None = None  # perceptual distance; None: decided from the images
    fid_weights: str | None = None  # local FID Inception weights
    lpips_weights: str | None = None  # local torchvision backbone weights for LPIPS


class Resources(_Strict):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)


class BenchConfig(_Strict):
    name: str = "bench"
    model: str = "mini"
    methods: list[MethodEntry] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    aspects: list[str] = Field(default_factory=lambda: ["forgetting", "preservation", "quality", "alignment",
                                                        "robustness"])
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v):
        if not isinstance(v, list):
            return v
        return [{"label": m, "method": m} if isinstance(m, str) else
                ({"label": m.get("label", m.get("method")), **m} if isinstance(m, dict) else m) for m in v]


def load_config(path: Path) -> tuple[BenchConfig, dict]:
    """The validated config and its raw mapping; every mistake is one line naming the field or name."""
    from ..evaluation.evaluate import check_aspects
    from ..evaluation.judges import get_judge
    from ..methods import REGISTRY, get_method
    from ..methods.base import parse_config
    from ..tasks import load_task

    path = Path(path)
    raw = read_mapping(path, "bench config")
    try:
        cfg = BenchConfig(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        what = "unknown field" if err["type"] == "extra_forbidden" else "bad value for"
        raise UserError(f"bench config {path}: {what} {loc!r}" + ("" if what == "unknown field" else f": {err['msg']}"))
    labels = [m.label for m in cfg.methods]
    if len(set(labels)) != len(labels):
        raise UserError(f"bench config {path}: method labels must be unique; repeated: "
                        f"{sorted({x for x in labels if labels.count(x) > 1})[0]!r}")
    for m in cfg.methods:
        if m.method not in REGISTRY:
            raise UserError(f"bench config {path}: unknown method {m.method!r}; available: {', '.join(sorted(REGISTRY))}")
        parse_config(get_method(m.method), None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                  for k, v in m.set.items()])
    base = path.parent
    for t in cfg.tasks:
        try:
            load_task(_task_path(t, base))
        except UserError as e:
            raise UserError(f"bench config {path}: task {t!r}: {e}") from None
    check_aspects(cfg.aspects)
    if cfg.evaluation.attacks is not None:
        from ..attacks.base import parse_attack_specs

        try:
            parse_attack_specs(cfg.evaluation.attacks)
        except UserError as e:
            raise UserError(f"bench config {path}: evaluation.attacks: {e}") from None
    if cfg.evaluation.judge:
        get_judge(cfg.evaluation.judge)
    return cfg, raw


def _task_path(spec: str, base: Path) -> str:
    if spec.startswith("mini:"):
        return spec
    p = Path(spec)
    return str(p if p.is_absolute() or p.exists() else base / p)


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
