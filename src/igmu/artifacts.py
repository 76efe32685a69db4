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
from pathlib import Path

import torch

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


def load_artifact(path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    p = Path(path)
    if not is_artifact(p):
        raise UserError(f"{path} is not an igmu artifact (no manifest.json of format {FORMAT})")
    manifest = _read_manifest(p)
    if manifest.get("version", 0) > READS_UP_TO:
        raise UserError(f"artifact {path} has version {manifest['version']}; this igmu reads up to {READS_UP_TO}")
    return manifest, load_file(str(p / "weights.safetensors"))


@torch.no_grad()
def apply_tensors(pipe, tensors: dict) -> None:
    for key, value in tensors.items():
        comp, name = key.split(".", 1)
        module = getattr(pipe, comp, None)
        if module is None:
            raise UserError(f"artifact changes {comp!r}, which this pipeline does not have")
        params = dict(module.named_parameters())
        if name not in params or params[name].shape != value.shape:
            raise UserError(f"artifact tensor {key} does not fit this model; was it made from another base model?")
        params[name].copy_(value.to(params[name].dtype))


def attach_sampling(pipe, spec: dict) -> None:
    """Give a pipeline an inference-time method's change: its spec, and its sampling hook from the registry."""
    from .methods import sampler_for

    pipe.igmu_sampler = sampler_for(spec)
    pipe.igmu_sampling = spec


def load_model(spec: str, device: str = "cpu", dtype=None):
    """A pipeline from 'mini', a folder or hub id (models.load.load_pipeline), or from an igmu artifact folder:
    its base model is loaded and the artifact applied. An inference-time artifact (manifest "sampling")
    changes no weights: its sampling spec and hook are attached (see the module docstring), which
    `generate.generate_images` honours (plain `pipe(...)` calls do not)."""
    from .models.load import load_pipeline

    if spec and is_artifact(spec):
        manifest, tensors = load_artifact(spec)
        pipe = load_model(manifest["base_model"], device, dtype)
        apply_tensors(pipe, tensors)
        if manifest.get("sampling"):
            attach_sampling(pipe, manifest["sampling"])
        return pipe
    return load_pipeline(spec, device, dtype)


def export_merged(artifact: Path, out: Path, base: str | None = None) -> Path:
    manifest, _ = load_artifact(artifact)
    if manifest.get("sampling"):
        raise UserError(f"{artifact} is an inference-time artifact ({manifest['method']}): it changes how the pipeline "
                        f"samples, not its weights, so it cannot be merged into a pipeline folder; "
                        f"sample with it directly: igmu generate --model {artifact}")
    pipe = load_model(str(artifact)) if base is None else _apply_to(base, artifact)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "igmu_artifact_manifest.json").write_text(json.dumps(manifest, indent=1))
    return Path(out)


def _apply_to(base: str, artifact: Path):
    pipe = load_model(base)
    apply_tensors(pipe, load_artifact(artifact)[1])
    return pipe
