"""The Eraser interface and registry.

Two kinds of eraser:

- kind "weights" (the default): `erase(pipe, req, cfg)` returns the tensors it
  changed, keyed `<component>.<parameter name>` (e.g. `unet.down_blocks.0...to_v.weight`).
  Artifacts (igmu/artifacts.py, written by igmu/erase.py) store exactly those tensors plus a manifest.
- kind "sampling" (inference-time baselines such as a negative prompt or SLD):
  the weights stay as they are; `sampling(req, cfg)` returns a JSON-able spec
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
from typing import ClassVar, Protocol

import numpy as np

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..diffusion.arch import FAMILIES as FAMILY_LABELS
from ..errors import UserError


class MethodConfig(BaseModel):
    """Hyper-parameters of a method; unknown options are errors."""
    model_config = ConfigDict(extra="forbid")


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
    values: dict = {}
    if config_file:
        try:
            with open(config_file) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise UserError(f"cannot read --config {config_file}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise UserError(f"--config {config_file} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"--config {config_file} must be a mapping of option: value")
        values.update(loaded)
    for s in sets or []:
        if "=" not in s:
            raise UserError(f"--set takes key=value, got {s!r}")
        k, v = s.split("=", 1)
        try:
            values[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:  # not a YAML scalar (e.g. "{} and {}"): take it as a plain string
            values[k.strip()] = v
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
