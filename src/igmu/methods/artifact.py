"""Artifacts: what erasure produced, as the changed tensors (safetensors) plus a manifest.

    ARTIFACT/weights.safetensors   keys "<component>.<parameter>", e.g. "unet.mid_block...to_v.weight"
    ARTIFACT/manifest.json         format, base model and its hash, method, config, targets, versions, cost

`load_pipeline(ARTIFACT)` loads the base model and applies the tensors;
`export_merged` writes a plain diffusers pipeline folder.

Inference-time methods (Eraser.kind == "sampling": negprompt, sld) change no
weights: their weights.safetensors is empty and the manifest holds a
"sampling" spec, e.g. {"type": "negative_prompt", "negative_prompt": "circle"};
`load_pipeline` attaches it to the pipeline (`pipe.igmu_sampling`) and
`generate_images` samples with it. Such manifests have version 2, so that an
igmu which reads only version 1 refuses them rather than silently sampling
without the change; they cannot be exported as merged weights.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..utils.io import atomic_dir
from ..utils.memory import peak_rss_mb

FORMAT = "igmu-artifact"
VERSION = 1  # artifacts of changed weights
SAMPLING_VERSION = 2  # artifacts with a "sampling" spec (inference-time methods)
READS_UP_TO = 2


def is_artifact(path) -> bool:
    p = Path(path) / "manifest.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def model_hash(where: str) -> str:
    """sha256 over a pipeline folder's configs and weights (a hub id hashes as its name)."""
    p = Path(where)
    if not p.is_dir():
        return "hub:" + where
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".txt", ".bin"):
            h.update(str(f.relative_to(p)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    import diffusers
    import transformers

    from .. import __version__
    return {"igmu": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


def _original(where: str, key: str):
    """The base model's value of one changed tensor, read lazily from its safetensors (None if unavailable)."""
    from safetensors import safe_open

    comp, name = key.split(".", 1)
    folder = Path(where) / comp
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(f), "pt") as sf:
            if name in sf.keys():
                return sf.get_tensor(name)
    return None


def run_erase(model: str, method_name: str, targets: list[str], anchor: str | None, preserve: list[str],
              config_file: str | None, sets: list[str] | None, out: Path, progress_factory=None) -> Path:
    from ..models.load import load_pipeline, resolve_model
    from ..utils.io import check_writable_dir
    from . import get_method
    from .base import EraseRequest, parse_config

    method = get_method(method_name)
    method.progress_factory = progress_factory
    cfg = parse_config(method, config_file, sets)
    targets = [t.strip() for t in targets or []]
    if not targets:
        raise UserError("no --target given; name the concept to erase, e.g. --target \"circle\"")
    if len(targets) > 1 and not method.multi_concept:
        raise UserError(f"method {method.name} erases one concept at a time; give one --target")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_artifact(out))):
        raise UserError(f"--out {out} exists and is not an igmu artifact; choose a new folder")
    check_writable_dir(out.parent)
    where = resolve_model(model)
    pipe = load_pipeline(model)
    req = EraseRequest(targets=targets, anchor=anchor, preserve=[p.strip() for p in preserve or []])
    method.check(pipe, req, cfg)
    sampling = None
    t0 = time.perf_counter()
    if method.kind == "sampling":
        sampling = method.sampling(req, cfg)
        changed = {}
    else:
        changed = method.erase(pipe, req, cfg)
    secs = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    n_tensor = sum(v.numel() for v in changed.values())
    n_diff = 0
    for k, v in changed.items():
        orig = _original(where, k)
        n_diff += int((orig.to(v.dtype) != v).sum()) if orig is not None and orig.shape == v.shape else v.numel()
    manifest = {
        "format": FORMAT, "version": VERSION if sampling is None else SAMPLING_VERSION,
        "base_model": model, "base_model_resolved": where,
        "base_model_hash": model_hash(where), "method": method.name, "config": cfg.model_dump(),
        "targets": targets, "anchor": anchor, "preserve": req.preserve, "versions": _versions(),
        "cost": {"erase_seconds": round(secs, 3), "peak_rss_mb": round(peak_mb, 1),
                 "params_in_changed_tensors": n_tensor, "params_changed": n_diff},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sampling is not None:
        from ..generate import check_sampling

        check_sampling(sampling)
        manifest["sampling"] = json.loads(json.dumps(sampling))  # JSON-able by contract; stored as read back
        manifest["cost"]["unet_passes_per_step"] = method.unet_passes_per_step  # plain CFG: 2
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in changed.items()}, str(tmp / "weights.safetensors"))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def load_artifact(path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    p = Path(path)
    if not is_artifact(p):
        raise UserError(f"{path} is not an igmu artifact (no manifest.json of format {FORMAT})")
    manifest = json.loads((p / "manifest.json").read_text())
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


def export_merged(artifact: Path, out: Path, base: str | None = None) -> Path:
    from ..models.load import load_pipeline

    manifest, _ = load_artifact(artifact)
    if manifest.get("sampling"):
        raise UserError(f"{artifact} is an inference-time artifact ({manifest['method']}): it changes how the pipeline "
                        f"samples, not its weights, so it cannot be merged into a pipeline folder; "
                        f"sample with it directly: igmu generate --model {artifact}")
    pipe = load_pipeline(str(artifact)) if base is None else _apply_to(base, artifact)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "igmu_artifact_manifest.json").write_text(json.dumps(manifest, indent=1))
    return Path(out)


def _apply_to(base: str, artifact: Path):
    from ..models.load import load_pipeline

    pipe = load_pipeline(base)
    apply_tensors(pipe, load_artifact(artifact)[1])
    return pipe
