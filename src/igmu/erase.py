"""Running an eraser: validate the request, load the model, erase, and write the artifact (artifacts.py)
with its manifest and cost, atomically."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .artifacts import FORMAT, SAMPLING_VERSION, VERSION, is_artifact, original_tensor
from .errors import UserError
from .utils.io import atomic_dir
from .utils.memory import peak_rss_mb


def run_erase(model: str, method_name: str, targets: list[str], anchor: str | None, preserve: list[str],
              config_file: str | None, sets: list[str] | None, out: Path, progress_factory=None,
              preset=None) -> Path:
    """`preset`: None (the method's published defaults), "published" (the same, recorded as chosen), a preset
    file (presets.py: checked against the model, its entry for this method applied under --config / --set),
    or a presets.PresetChoice already resolved by the caller (bench: chained steps erase from merged models)."""
    from .artifacts import load_model
    from .methods import get_method, sampler_for
    from .methods.base import EraseRequest, option_values, parse_config
    from .models.load import model_hash, resolve_model
    from .presets import PresetChoice, resolve_preset
    from .utils.io import check_writable_dir
    from .utils.versions import versions

    method = get_method(method_name)
    method.progress_factory = progress_factory
    if preset is not None and not isinstance(preset, PresetChoice):
        preset = resolve_preset(preset, model, method, option_values(method, config_file, sets))
    cfg = parse_config(method, config_file, sets, preset.values if preset else None)
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
    pipe = load_model(model)
    req = EraseRequest(targets=targets, anchor=anchor, preserve=[p.strip() for p in preserve or []])
    method.check_architecture(pipe)
    cfg = method.resolve_config(pipe, cfg)  # the family's official defaults where they differ (manifest records them)
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
        orig = original_tensor(where, k)
        n_diff += int((orig.to(v.dtype) != v).sum()) if orig is not None and orig.shape == v.shape else v.numel()
    manifest = {
        "format": FORMAT, "version": VERSION if sampling is None else SAMPLING_VERSION,
        "base_model": model, "base_model_resolved": where,
        "base_model_hash": model_hash(where), "method": method.name, "config": cfg.model_dump(),
        "targets": targets, "anchor": anchor, "preserve": req.preserve, "versions": versions(),
        **({"preset": preset.manifest()} if preset else {}),
        "cost": {"erase_seconds": round(secs, 3), "peak_rss_mb": round(peak_mb, 1),
                 "params_in_changed_tensors": n_tensor, "params_changed": n_diff},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sampling is not None:
        sampler_for(sampling)  # the registry can turn the spec back into a sampling hook (else: UserError)
        manifest["sampling"] = json.loads(json.dumps(sampling))  # JSON-able by contract; stored as read back
        manifest["cost"]["unet_passes_per_step"] = method.unet_passes_per_step  # plain CFG: 2
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in changed.items()}, str(tmp / "weights.safetensors"))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
