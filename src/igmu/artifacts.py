"""Artifacts: what erasure produced, as the changed tensors (safetensors) plus a manifest.

    ARTIFACT/weights.safetensors   keys "<component>.<parameter>", e.g. "unet.mid_block...to_v.weight"
    ARTIFACT/manifest.json         format, base model and its hash, method, config, targets, versions, cost

`load_model(spec)` loads a plain pipeline, or an artifact: its base model with the tensors applied;
`export_merged` writes a plain diffusers pipeline folder. (erase.py writes artifacts.)

Inference-time methods (Eraser.kind == "sampling": negprompt, sld) change no
weights: their weights.safetensors is empty and the manifest holds a
"sampling" spec, e.g. {"type": "negative_prompt", "negative_prompt": "circle"};
`load_model` attaches it to the pipeline (`pipe.igmu_sampling`) together with
the method's sampling hook found through the method registry
(`pipe.igmu_sampler`), which `generate_images` calls. Such manifests have
version 2, so that an igmu which reads only version 1 refuses them rather than
silently sampling without the change; they cannot be exported as merged weights.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import UserError
from .utils.io import atomic_dir

FORMAT = "igmu-artifact"
VERSION = 1  # artifacts of changed weights
SAMPLING_VERSION = 2  # artifacts with a "sampling" spec (inference-time methods)
READS_UP_TO = 2


def _read_manifest(path) -> dict:
    """manifest.json of an artifact folder, through the validation layer (UTF-8, size, depth, no NaN)."""
    from .utils.validate import load_json

    m = load_json(Path(path) / "manifest.json", "artifact manifest")
    if not isinstance(m, dict):
        raise UserError(f"artifact manifest {Path(path) / 'manifest.json'} is not a mapping")
    return m


def is_artifact(path) -> bool:
    p = Path(path) / "manifest.json"
    if not p.is_file():
        return False
    try:
        return _read_manifest(path).get("format") == FORMAT
    except UserError:
        return False


def _looks_like_artifact(path) -> bool:
    """A folder with a manifest.json and no model_index.json: meant as an artifact, even if damaged."""
    p = Path(path)
    return (p / "manifest.json").is_file() and not (p / "model_index.json").is_file()


def original_tensor(where: str, key: str):
    """The base model's value of one changed tensor, read lazily from its safetensors (None if unavailable)."""
    from safetensors import safe_open

    comp, name = key.split(".", 1)
    folder = Path(where) / comp
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(f), "pt") as sf:
            if name in sf.keys():
                return sf.get_tensor(name)
    return None


class _Cost(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    erase_seconds: float = Field(ge=0)
    peak_rss_mb: float = Field(ge=0)
    params_in_changed_tensors: int = Field(ge=0)
    params_changed: int = Field(ge=0)


class Manifest(BaseModel):
    """manifest.json, as erase.run_erase writes it. Strict types (a version "1" or a base_model 5 is refused);
    unknown fields are kept, so that later igmu versions can add some within a format version."""
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    format: Literal["igmu-artifact"]
    version: int = Field(ge=1, le=READS_UP_TO)
    base_model: str = Field(min_length=1, max_length=4096)
    base_model_resolved: str | None = None
    base_model_hash: str | None = None
    method: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    targets: list[str] = Field(min_length=1)
    anchor: str | None = None
    preserve: list[str] = Field(default_factory=list)
    versions: dict[str, Any] | None = None
    cost: _Cost
    created: str | None = None
    sampling: dict[str, Any] | None = None


_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+")


def load_artifact(path) -> tuple[dict, dict]:
    """(manifest, tensors) of an artifact folder, each checked: the manifest against the schema (Manifest), the
    weights file as safetensors (truncated, missing, pickled: one line), the tensor names as
    "<component>.<parameter>", finite floating-point values. Whether they fit a model is checked when they are
    applied (apply_tensors)."""
    from pydantic import ValidationError
    from safetensors.torch import load_file

    p = Path(path)
    if not is_artifact(p):
        if (p / "manifest.json").is_file():
            _read_manifest(p)  # says what is wrong with it (not UTF-8, not JSON, too deep, ...)
        raise UserError(f"{path} is not an igmu artifact (no manifest.json of format {FORMAT})")
    manifest = _read_manifest(p)
    v = manifest.get("version")
    if isinstance(v, int) and not isinstance(v, bool) and v > READS_UP_TO:
        raise UserError(f"artifact {path} has version {v}; this igmu reads up to {READS_UP_TO}")
    try:
        Manifest(**manifest)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise UserError(f"artifact {path}: manifest.json: " + (f"missing field {loc!r}" if err["type"] == "missing"
                        else f"bad value for {loc!r}: {err['msg']}")) from None
    w = p / "weights.safetensors"
    if not w.is_file():
        raise UserError(f"artifact {path} has no weights.safetensors (an incomplete copy?)")
    try:
        tensors = load_file(str(w))
    except Exception as e:  # the safetensors parser on a user's file: truncated, damaged, or not safetensors
        raise UserError(f"artifact {path}: weights.safetensors is not a readable safetensors file (truncated, "
                        f"damaged, or another format such as a pickle): {str(e).strip().splitlines()[0][:200]}") \
            from None
    for key, t in tensors.items():
        if not _KEY.fullmatch(key):
            raise UserError(f"artifact {path}: tensor name {key[:80]!r} is not <component>.<parameter>")
        if not t.is_floating_point():
            raise UserError(f"artifact {path}: tensor {key} has dtype {t.dtype}; weights are floating point")
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"artifact {path}: tensor {key} holds non-finite values (NaN or infinite); "
                            "the artifact is broken")
    return manifest, tensors


@torch.no_grad()
def apply_tensors(pipe, tensors: dict) -> None:
    """Copy an artifact's tensors into the pipeline's parameters; each must name a parameter of one of the
    pipeline's model components, with the same shape (checked for all before any is copied)."""
    comps = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    params_of: dict = {}
    for key, value in tensors.items():
        comp, name = key.split(".", 1) if "." in key else (key, "")
        if comp not in comps:
            raise UserError(f"artifact changes {comp!r}, which is not a model component of this pipeline "
                            f"({', '.join(sorted(comps))}); was it made from another kind of base model?")
        params = params_of.setdefault(comp, dict(comps[comp].named_parameters()))
        if name not in params or params[name].shape != value.shape:
            raise UserError(f"artifact tensor {key} does not fit this model; was it made from another base model?")
    for key, value in tensors.items():
        comp, name = key.split(".", 1)
        params_of[comp][name].copy_(value.to(params_of[comp][name].dtype))


def attach_sampling(pipe, spec: dict) -> None:
    """Give a pipeline an inference-time method's change: its spec, and its sampling hook from the registry."""
    from .methods import sampler_for

    pipe.igmu_sampler = sampler_for(spec)
    pipe.igmu_sampling = spec


def load_model(spec: str, device: str = "cpu", dtype=None, force: bool = False):
    """A pipeline from 'mini', a folder or hub id (models.load.load_pipeline), or from an igmu artifact folder:
    its base model is loaded and the artifact applied. An inference-time artifact (manifest "sampling")
    changes no weights: its sampling spec and hook are attached (see the module docstring), which
    `generate.generate_images` honours (plain `pipe(...)` calls do not).

    The base must be the model the artifact was made from: its fingerprint must equal the manifest's
    base_model_hash, else UserError; force=True applies it anyway, with a warning on stderr."""
    from .models.load import load_pipeline

    if spec and (is_artifact(spec) or _looks_like_artifact(spec)):
        manifest, tensors = load_artifact(spec)  # a damaged artifact says what is wrong with it
        base = manifest["base_model"]
        check_base(spec, manifest, base, force)
        pipe = load_pipeline(base, device, dtype)
        apply_tensors(pipe, tensors)
        if manifest.get("sampling"):
            attach_sampling(pipe, manifest["sampling"])
        return pipe
    return load_pipeline(spec, device, dtype)


def check_model_spec(spec: str) -> None:
    """What load_model(spec) would refuse, found without loading any weights: a damaged artifact, a base that is
    not the artifact's, a model that does not resolve. For commands that would otherwise work for minutes first."""
    from .models.load import resolve_model

    if spec and (is_artifact(spec) or _looks_like_artifact(spec)):
        manifest, tensors = load_artifact(spec)
        check_base(spec, manifest, manifest["base_model"])
        check_fits_folder(resolve_model(manifest["base_model"]), tensors)
    else:
        resolve_model(spec)


def check_fits_folder(where: str, tensors: dict) -> None:
    """apply_tensors' checks against a local pipeline folder's safetensors headers (names and shapes), without
    loading the model; a hub id is checked when applied."""
    from safetensors import safe_open

    root = Path(where)
    if not root.is_dir():
        return
    shapes: dict = {}
    for key, value in tensors.items():
        comp, name = key.split(".", 1)
        if comp not in shapes:
            folder = root / comp
            if not (folder.is_dir() and (folder / "config.json").is_file()):
                raise UserError(f"artifact changes {comp!r}, which is not a model component of the base {where}")
            shapes[comp] = {}
            for f in sorted(folder.glob("*.safetensors")):
                with safe_open(str(f), "pt") as sf:
                    shapes[comp].update({k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()})
        if shapes[comp] and shapes[comp].get(name) != tuple(value.shape):
            raise UserError(f"artifact tensor {key} does not fit this model; was it made from another base model?")


def check_base(artifact, manifest: dict, base: str, force: bool = False) -> None:
    """The base an artifact is applied to is a plain pipeline whose fingerprint (models.load.model_hash) is the
    manifest's base_model_hash; a mismatch is refused unless force, which warns."""
    import sys

    from .models.load import model_hash, resolve_model

    if is_artifact(base):
        raise UserError(f"artifact {artifact}: its base model {base!r} is itself an igmu artifact; an artifact "
                        "applies to a plain pipeline (merge the base first: igmu export)")
    want = manifest.get("base_model_hash")
    if not want:
        return
    got = model_hash(resolve_model(base))
    if got != want:
        msg = (f"artifact {artifact} was made from a base model with fingerprint {want[:12]}..., but {base!r} has "
               f"{got[:12]}...: it would be applied to another model")
        if not force:
            raise UserError(msg + "; give the base it was made from, or pass --force to apply it anyway")
        print(f"warning: {msg}; applying it anyway (--force)", file=sys.stderr)


def is_export(path) -> bool:
    """A folder `export_merged` wrote (a pipeline with the artifact's manifest beside it)."""
    p = Path(path)
    return (p / "igmu_artifact_manifest.json").is_file() and (p / "model_index.json").is_file()


def export_merged(artifact: Path, out: Path, base: str | None = None, overwrite: bool = False,
                  force: bool = False) -> Path:
    """Write base + artifact as a plain diffusers pipeline folder at `out`, which must be new, empty, or (with
    overwrite) an earlier export; a folder igmu did not write, or a file, is never replaced."""
    from .utils.io import check_out

    manifest, _ = load_artifact(artifact)
    if manifest.get("sampling"):
        raise UserError(f"{artifact} is an inference-time artifact ({manifest['method']}): it changes how the pipeline "
                        f"samples, not its weights, so it cannot be merged into a pipeline folder; "
                        f"sample with it directly: igmu generate --model {artifact}")
    check_out(out, is_export, "igmu export (merged pipeline)", overwrite=overwrite)
    pipe = load_model(str(artifact), force=force) if base is None else _apply_to(base, artifact, force)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "igmu_artifact_manifest.json").write_text(json.dumps(manifest, indent=1, allow_nan=False))
    return Path(out)


def _apply_to(base: str, artifact: Path, force: bool = False):
    from .models.load import load_pipeline

    manifest, tensors = load_artifact(artifact)
    check_base(artifact, manifest, base, force)
    pipe = load_pipeline(base)
    apply_tensors(pipe, tensors)
    return pipe
