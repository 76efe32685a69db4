"""The Eraser interface and registry.

Two kinds of eraser:

- kind "weights" (the default): `erase(pipe, req, cfg)` returns the tensors it
  changed, keyed `<component>.<parameter name>` (e.g. `unet.down_blocks.0...to_v.weight`).
  Artifacts (igmu/artifacts.py, written by igmu/erase.py) store exactly those tensors plus a manifest.
- kind "sampling" (inference-time methods such as a negative prompt or SLD):
  the weights stay as they are; `sampling(req, cfg)` (or `sampling_spec(pipe, req, cfg)`, for a spec
  computed from the model, e.g. GLoCE's gated modules) returns a JSON-able spec
  `{"type": <the eraser's sampling_type>, ...}` of how the pipeline must sample.
  The artifact stores it in its manifest under "sampling". The eraser's
  `sampler(spec)` turns a spec back into a sampling hook (a `Sampler`); the
  registry finds the eraser by the spec's type (methods.sampler_for), and
  artifacts.load_model attaches the hook to the pipeline as `pipe.igmu_sampler`,
  which `generate.generate_images` calls instead of the plain pipeline. So
  generation reaches inference-time methods only through the registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, get_args, get_origin

import numpy as np

from pydantic import BaseModel, ConfigDict, ValidationError

from ..diffusion.arch import FAMILIES as FAMILY_LABELS
from ..errors import UserError


SEED_MAX = 2 ** 63 - 1
# Upper bounds of integer options whose Field sets none, by option name (the first entry whose words the name
# ends with, else INT_MAX_DEFAULT). A method's own Field(le=...) wins. `igmu method NAME` shows every bound.
INT_MAX_BY_NAME = (
    ("seed", SEED_MAX - 2 ** 32),  # a method derives seeds from it (seed + k, seed + 7919 * i): they must fit too
    ("sample_steps", 1000), ("timesteps", 1000),  # at most a scheduler's 1,000 training timesteps
    ("iterations", 100_000), ("steps", 100_000), ("step", 100_000), ("iter", 100_000), ("iters", 100_000),
    ("warm_up", 100_000),  # training length: 100x the longest official schedule (ESD 1,000; SA ~12,500)
    ("epochs", 10_000),
)
INT_MAX_DEFAULT = 1_000_000  # images, batch sizes, ranks, prompt counts: bounded so that no count is unbounded


def _int_max(name: str) -> int:
    for suffix, bound in INT_MAX_BY_NAME:
        if name == suffix or name.endswith("_" + suffix):
            return bound
    return INT_MAX_DEFAULT


class MethodConfig(BaseModel):
    """Hyper-parameters of a method; unknown options are errors.

    The Field bounds are the one source of truth for what a method accepts: every float option must be finite
    (allow_inf_nan=False, for all methods at once), every integer option has an upper bound (its Field's le/lt,
    else INT_MAX_BY_NAME / INT_MAX_DEFAULT, added to the Field here) and the seed a lower bound of 0.
    `option_table` reads them back for `igmu method NAME`."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kw):
        import annotated_types as at

        super().__pydantic_init_subclass__(**kw)
        changed = False
        for name, f in cls.model_fields.items():
            if f.annotation is not int and f.annotation != (int | None):
                continue
            if not any(isinstance(m, (at.Le, at.Lt)) for m in f.metadata):
                f.metadata.append(at.Le(_int_max(name)))
                changed = True
            if name == "seed" and not any(isinstance(m, (at.Ge, at.Gt)) for m in f.metadata):
                f.metadata.append(at.Ge(0))
                changed = True
        if changed:
            cls.model_rebuild(force=True)


def option_table(config_cls: type[MethodConfig]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, bounds) of every option of a method config, read from its Fields."""
    import annotated_types as at

    rows = []
    for name, f in config_cls.model_fields.items():
        ann = f.annotation
        if get_origin(ann) is Literal:
            tname = "one of " + "|".join(map(str, get_args(ann)))
        else:
            tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        lo = hi = ""
        for m in f.metadata:
            if isinstance(m, at.Ge):
                lo = f">= {m.ge:g}"
            elif isinstance(m, at.Gt):
                lo = f"> {m.gt:g}"
            elif isinstance(m, at.Le):
                hi = f"<= {m.le:,}" if isinstance(m.le, int) else f"<= {m.le:g}"
            elif isinstance(m, at.Lt):
                hi = f"< {m.lt:g}"
        bounds = ", ".join(x for x in (lo, hi) if x)
        if ann in (float, float | None) or "float" in tname:
            bounds = ", ".join(x for x in (bounds, "finite") if x)
        default = f.get_default(call_default_factory=True)
        rows.append((name, tname, repr(default) if isinstance(default, str) else str(default), bounds))
    return rows


@dataclass
class EraseRequest:
    targets: list[str]
    anchor: str | None = None
    preserve: list[str] = field(default_factory=list)


class Sampler(Protocol):
    """An inference-time method's sampling hook: images for prompts from given initial latents, as the plain
    pipeline call `pipe(prompt, negative_prompt, latents, num_inference_steps, guidance_scale, height, width)`
    would make them (float N x H x W x 3 in [0, 1]), with the method's change. `negative_prompts`: the user's
    (one per prompt), or None."""

    def __call__(self, pipe, prompts: list[str], negative_prompts: list[str] | None, latents, steps: int,
                 guidance: float, height: int, width: int) -> np.ndarray: ...


class Eraser:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line on the mechanism
    changes: ClassVar[str]  # which parts of the model it changes
    source: ClassVar[str]  # paper and official code
    multi_concept: ClassVar[bool] = False
    kind: ClassVar[str] = "weights"  # "weights": erase() gives changed tensors; "sampling": sampling() gives a spec
    sampling_type: ClassVar[str | None] = None  # sampling kind: the "type" of its specs
    unet_passes_per_step: ClassVar[int] = 2  # sampling kind: UNet batch per step (plain CFG: 2), an inference cost
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Architecture support, by adapter family (diffusion.arch.FAMILIES: "sd", "sdxl", "sd3", "flux"): None means
    # supported (and tested on a tiny pipeline of that family), a string is the one-line reason the method
    # refuses that family; a family not listed is "not yet" ported. docs/architectures.md is generated from it.
    architectures: ClassVar[dict[str, str | None]] = {"sd": None}
    # Defaults that differ on a family because the official code for that architecture uses other values
    # (family -> {option: value}, each cited where declared); applied to the options the user did not set.
    family_defaults: ClassVar[dict[str, dict]] = {}
    # Calibration knobs (the calibration protocol, igmu calibrate). strength: option -> "lr" (a learning rate),
    # "up" (a larger value erases more: an erase or guidance scale), "down" (a smaller one does), or a list of
    # named settings, weakest first. budget: option -> its cost role ("steps", "images", "sample_steps", ...).
    strength: ClassVar[dict] = {}
    budget: ClassVar[dict] = {}

    progress_factory = None  # set by the runner: total -> advance(k, **info)

    def progress(self, total: int):
        if self.progress_factory is None:
            return lambda k=1, **info: None
        return self.progress_factory(total)

    def check_architecture(self, pipe) -> None:
        """One UserError line when this method refuses, or has not been ported to, the pipeline's family."""
        from ..diffusion.arch import adapter_for

        a = adapter_for(pipe)
        if a.family not in self.architectures:
            runs = ", ".join(FAMILY_LABELS[f] for f, why in self.architectures.items() if why is None)
            raise UserError(f"method {self.name} has not been ported to {a.label} yet (it runs on {runs}); "
                            f"see docs/architectures.md")
        why = self.architectures[a.family]
        if why is not None:
            raise UserError(f"method {self.name} does not support {a.label}: {why}")

    def resolve_config(self, pipe, cfg):
        """cfg with this family's defaults (family_defaults) for every option the user did not set."""
        from ..diffusion.arch import adapter_for

        over = self.family_defaults.get(adapter_for(pipe).family, {})
        update = {k: v for k, v in over.items() if k not in cfg.model_fields_set}
        return cfg.model_copy(update=update) if update else cfg

    def check(self, pipe, req: EraseRequest, cfg) -> None:
        """Raise UserError when this method cannot edit this model or request."""

    def erase(self, pipe, req: EraseRequest, cfg) -> dict:
        """kind "weights": the changed tensors, keyed "<component>.<parameter>"."""
        raise NotImplementedError

    def sampling(self, req: EraseRequest, cfg) -> dict:
        """kind "sampling": a JSON-able spec {"type": self.sampling_type, ...}."""
        raise NotImplementedError

    def sampling_spec(self, pipe, req: EraseRequest, cfg) -> dict:
        """kind "sampling": the spec for this model (what erasing calls). By default `sampling(req, cfg)`; a method
        whose spec is computed from the model (GLoCE) overrides this."""
        return self.sampling(req, cfg)

    def sampler(self, spec: dict) -> Sampler:
        """kind "sampling": the sampling hook for a spec this eraser made (UserError if the spec is malformed)."""
        raise NotImplementedError


REGISTRY: dict[str, type[Eraser]] = {}


def register(cls: type[Eraser]) -> type[Eraser]:
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> Eraser:
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]()


def option_values(method: Eraser, config_file: str | None = None, sets: list[str] | None = None) -> dict:
    """The options a user gives: a YAML file, then key=value overrides (not yet validated against the method)."""
    from ..utils.validate import load_mapping, parse_yaml, read_text

    values: dict = {}
    if config_file:
        if not read_text(config_file, "--config").strip():
            loaded = {}  # an empty file: the defaults
        else:
            loaded = load_mapping(config_file, "--config")
        values.update(loaded)
    for s in sets or []:
        if "=" not in s:
            raise UserError(f"--set takes key=value, got {s!r}")
        k, v = s.split("=", 1)
        try:
            values[k.strip()] = parse_yaml(v, f"--set {k.strip()}")
        except UserError as e:
            if "is not valid YAML" not in str(e):  # too deep, too large or non-finite: refused
                raise
            values[k.strip()] = v  # not a YAML scalar (e.g. "{} and {}"): take it as a plain string
    return values


def parse_config(method: Eraser, config_file: str | None = None, sets: list[str] | None = None,
                 base: dict | None = None) -> MethodConfig:
    """Defaults <- `base` (a preset's values) <- YAML file <- key=value overrides; unknown keys and bad values are
    one-line errors."""
    values = {**(base or {}), **option_values(method, config_file, sets)}
    fields = method.Config.model_fields
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise UserError(f"method {method.name} has no option {unknown[0]!r}; its options: {', '.join(fields)}")
    try:
        return method.Config(**values)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"bad value for {method.name} option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
