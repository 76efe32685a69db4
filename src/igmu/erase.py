"""Running an eraser: validate the request, load the model, erase, and write the artifact (artifacts.py)
with its manifest and cost, atomically.

The runtime (utils/device.py: --device, --dtype, --gradient-checkpointing) says where the model is loaded,
in which dtype, and how the fine-tuning loop trains. The artifact stores each changed tensor in the dtype
the method produced it in (float32 for trained parameters, which are float32 master weights, and for
closed-form solutions), records those dtypes and the runtime in the manifest, and applies to a base
loaded in any dtype (artifacts.apply_tensors casts).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .artifacts import FORMAT, SAMPLING_VERSION, VERSION, is_artifact, original_tensor
from .errors import NonFiniteError, UserError
from .utils.device import Runtime, dtype_name, hardware_errors, using
from .utils.io import atomic_dir
from .utils.memory import peak_gpu_mb, peak_rss_mb, reset_peak_gpu


def run_erase(model: str, method_name: str, targets: list[str], anchor: str | None, preserve: list[str],
              config_file: str | None, sets: list[str] | None, out: Path, progress_factory=None,
              runtime: Runtime | None = None, preset=None) -> Path:
    """`preset`: None (the method's published defaults), "published" (the same, recorded as chosen), a preset
    file (presets.py: checked against the model, its entry for this method applied under --config / --set),
    or a presets.PresetChoice already resolved by the caller (bench: chained steps erase from merged models)."""
    from .artifacts import load_model
    from .methods import get_method, sampler_for
    from .methods.base import EraseRequest, option_values, parse_config
    from .methods.common import check_request
    from .models.load import model_hash, resolve_model
    from .presets import PresetChoice, resolve_preset
    from .utils.io import check_out
    from .utils.validate import check_concepts
    from .utils.versions import versions

    method = get_method(method_name)
    method.progress_factory = progress_factory
    if preset is not None and not isinstance(preset, PresetChoice):
        preset = resolve_preset(preset, model, method, option_values(method, config_file, sets))
    cfg = parse_config(method, config_file, sets, preset.values if preset else None)
    if not targets:
        raise UserError("no --target given; name the concept to erase, e.g. --target \"circle\"")
    # the same text rules for all three; the anchor is kept as given (methods strip it; a blank one is the empty prompt)
    targets, _, preserve = check_concepts(targets, anchor, preserve)
    if len(targets) > 1 and not method.multi_concept:
        raise UserError(f"method {method.name} erases one concept at a time; give one --target")
    out = check_out(out, is_artifact, "igmu artifact")
    runtime = runtime or Runtime()
    if runtime.gradient_checkpointing and method.kind == "sampling":
        raise UserError(f"--gradient-checkpointing is for fine-tuning methods; {method.name} trains nothing")
    where = resolve_model(model)
    with hardware_errors(f"erase ({method.name})"):
        pipe = load_model(model, runtime.device, runtime.dtype)
        req = EraseRequest(targets=targets, anchor=anchor, preserve=list(preserve))
        method.check_architecture(pipe)
        cfg = method.resolve_config(pipe, cfg)  # the family's official defaults where they differ (manifest records them)
        check_request(pipe, req)  # every method: each concept fits the model's tokenizer
        method.check(pipe, req, cfg)
        sampling = None
        reset_peak_gpu(runtime.device)
        t0 = time.perf_counter()
        try:
            if method.kind == "sampling":
                sampling = method.sampling_spec(pipe, req, cfg)
                changed = {}
            else:
                with using(runtime):
                    changed = method.erase(pipe, req, cfg)
        except NonFiniteError as e:
            raise NonFiniteError(f"erasing with {method.name} stopped: {e}; nothing was written. "
                                 f"{_suspects(method, cfg, method.resolve_config(pipe, method.Config()))}",
                                 e.step) from None
        check_finite_tensors(changed, method, cfg, method.resolve_config(pipe, method.Config()))
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
        "runtime": runtime.describe(),
        "tensor_dtypes": sorted({dtype_name(v.dtype) for v in changed.values()}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    gpu_mb = peak_gpu_mb(runtime.device)
    if gpu_mb is not None:
        manifest["cost"]["peak_gpu_mb"] = round(gpu_mb, 1)
    if sampling is not None:
        sampler_for(sampling)  # the registry can turn the spec back into a sampling hook (else: UserError)
        manifest["sampling"] = json.loads(json.dumps(sampling))  # JSON-able by contract; stored as read back
        manifest["cost"]["unet_passes_per_step"] = method.unet_passes_per_step  # plain CFG: 2
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in changed.items()}, str(tmp / "weights.safetensors"))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, allow_nan=False))
    return out


def check_finite_tensors(changed: dict, method, cfg, defaults=None) -> None:
    """Refuse an erasure whose changed tensors hold NaN or infinite values (an artifact of them makes black
    images), naming the options that probably caused it."""
    import torch

    bad = [k for k, v in changed.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"erasing with {method.name} made {len(bad)} of {len(changed)} changed tensors "
                             f"non-finite (NaN or infinite; e.g. {bad[0]}); the artifact was not written. "
                             f"{_suspects(method, cfg, defaults)}")


_STEP_SIZES = ("lr", "lamb", "lam", "lmbda", "lambda", "scale", "alpha", "weight", "guidance", "strength", "eta")


def _suspects(method, cfg, defaults=None) -> str:
    """The options that probably made numbers non-finite: the float options set away from their defaults (the
    model family's, `defaults`; the largest change first), else the method's step sizes and weights (lr, lamb,
    ..._scale, ...)."""
    import math

    defaults = defaults if defaults is not None else method.Config()
    moved = []
    for k, v in cfg:
        d = getattr(defaults, k)
        if isinstance(v, float) and isinstance(d, (int, float)) and not isinstance(d, bool) and v != d:
            moved.append((abs(math.log10(abs(v) + 1e-300) - math.log10(abs(d) + 1e-300)), k, v, d))
    if moved:
        return "Probably caused by " + ", ".join(f"{k}={v:g} (default {d:g})" for _, k, v, d in sorted(moved)[::-1]) \
            + f"; try values nearer the defaults (igmu methods {method.name})."
    names = [k for k, v in cfg if isinstance(v, float) and any(k == s or k.endswith("_" + s) or k.startswith(s + "_")
                                                               for s in _STEP_SIZES)]
    return (f"Its step sizes and weights ({', '.join(names)}) are at their defaults; the base model or the request "
            "may be the cause.") if names else "The base model or the request may be the cause."
