"""LoRA adapters on any torch module (a diffusers UNet, a text encoder), through peft.

Written once for the methods that train low-rank adapters (SPM, MACE, ...):

    inject_lora(module, targets, rank, alpha, adapter="default")   add adapter `adapter` to exactly these modules
    lora_parameters(module, adapter)                               its trainable A/B parameters
    set_adapter_scale(module, adapter, scale)                      output = W x + scale * alpha/r * B A x
    only_adapters(module, [names])                                 context: enable just these ([] = base model)
    lora_delta(module, adapter)                                    {base weight name: scale * alpha/r * B@A}
    merge_lora(module, [names], scales)                            W += scale * alpha/r * B@A, remove all LoRA layers

A LoRA layer computes  W x + sum_a s_a (alpha_a / r_a) B_a A_a x  over its active adapters a,
with A_a: r x d_in, B_a: d_out x r (for a Conv2d, A is a conv with the base kernel and B a 1x1 conv).

Conventions:
- `targets` are exact qualified module names (as in module.named_modules()); peft's suffix
  matching is not used, so "to_k" never silently selects every to_k.
- After `inject_lora` every adapter injected so far is active (their outputs add up) and only
  the new adapter's A/B require grad: the module's own parameters and earlier adapters are
  frozen (they stay frozen after `merge_lora`). Scales start at 1. `only_adapters` and
  `set_adapter_scale` never change requires_grad.
- Parameter names: peft renames an adapted layer's weight "X.weight" to "X.base_layer.weight".
  Everything this module returns uses the plain names ("X.weight"), which are also the names
  after `merge_lora` has removed the LoRA layers.
- A/B initialisation (peft default: A Kaiming-uniform, B zero) draws from torch's global RNG;
  pass `seed` for an initialisation independent of it.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings

import torch

from ..errors import UserError


def _lora_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(plain qualified name, peft LoraLayer) for every LoRA-wrapped layer of `module`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def _grads_kept(module: torch.nn.Module):
    """peft's adapter switching toggles requires_grad; keep the caller's flags as they were."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def inject_lora(module: torch.nn.Module, targets: list[str], rank: int, alpha: float, adapter: str = "default",
                init_zero_b: bool = True, seed: int | None = None) -> list[str]:
    """Add LoRA adapter `adapter` (rank r, scaling alpha/r) to every Linear/Conv2d of `module` named in `targets`.

    Returns the adapted module names (sorted as in module order). Several adapters may coexist;
    all are active afterwards. `init_zero_b=False` draws B like A (non-zero delta from the start).
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(dict.fromkeys(targets or []))
    if not targets:
        raise UserError("no layers to put a LoRA adapter on (empty target list)")
    if rank < 1:
        raise UserError(f"LoRA rank must be at least 1, got {rank}")
    if not adapter or "." in adapter:
        raise UserError(f"bad LoRA adapter name {adapter!r} (non-empty, no dots)")
    existing = dict(module.named_modules())
    layers = dict(_lora_layers(module))
    if any(adapter in m.lora_A for m in layers.values()):
        raise UserError(f"this module already has a LoRA adapter named {adapter!r}")
    for t in targets:
        m = layers.get(t, existing.get(t))
        if m is None:
            raise UserError(f"no layer named {t!r} to put a LoRA adapter on")
        base = m.get_base_layer() if t in layers else m
        if not isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
            raise UserError(f"layer {t!r} is a {type(base).__name__}; LoRA adapters go on Linear or Conv2d layers")
    # peft matches a string pattern with re.fullmatch on each qualified module name: exact names only
    pattern = "|".join(re.escape(t) for t in targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, lora_dropout=0.0, bias="none",
                        init_lora_weights=True)
    previous = {n: list(m.active_adapters) for n, m in layers.items()}
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        with warnings.catch_warnings():  # "Already found a peft_config": several adapters are intended
            warnings.simplefilter("ignore")
            inject_adapter_in_model(config, module, adapter_name=adapter)
        injected = [n for n, m in _lora_layers(module) if adapter in m.lora_A]
        if not init_zero_b:
            for name, layer in _lora_layers(module):
                if adapter in layer.lora_B:
                    w = layer.lora_B[adapter].weight
                    with torch.no_grad():
                        torch.nn.init.kaiming_uniform_(w.view(w.shape[0], -1), a=math.sqrt(5))
    for name, layer in _lora_layers(module):
        layer.set_adapter(list(dict.fromkeys(previous.get(name, []) + ([adapter] if name in injected else []))))
    for n, p in module.named_parameters():  # freeze the base and the earlier adapters, train the new one
        p.requires_grad_(".lora_" in n and f".{adapter}." in n)
    return injected


def _layers_with(module, adapter: str) -> list[tuple[str, torch.nn.Module]]:
    out = [(n, m) for n, m in _lora_layers(module) if adapter in m.lora_A]
    if not out:
        raise UserError(f"this module has no LoRA adapter named {adapter!r}")
    return out


def lora_parameters(module: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """The A and B parameters of `adapter`, in module order."""
    out = []
    for _, layer in _layers_with(module, adapter):
        out += list(layer.lora_A[adapter].parameters()) + list(layer.lora_B[adapter].parameters())
    return out


def set_adapter_scale(module: torch.nn.Module, adapter: str, scale: float) -> None:
    """Set the adapter's output multiplier: its delta becomes scale * alpha/r * B@A."""
    for _, layer in _layers_with(module, adapter):
        layer.set_scale(adapter, float(scale))


@contextlib.contextmanager
def only_adapters(module: torch.nn.Module, adapters: list[str]):
    """Within the block only `adapters` act (an empty list: the plain base model); restored on exit."""
    adapters = list(adapters)
    known = {a for _, m in _lora_layers(module) for a in m.lora_A}
    missing = [a for a in adapters if a not in known]
    if missing:
        raise UserError(f"this module has no LoRA adapter named {missing[0]!r}")
    state = [(layer, list(layer.active_adapters), layer.disable_adapters) for _, layer in _lora_layers(module)]
    with _grads_kept(module):
        for layer, _, _ in state:
            if adapters:
                layer.enable_adapters(True)
                layer.set_adapter(adapters)
            else:
                layer.enable_adapters(False)
    try:
        yield module
    finally:
        with _grads_kept(module):
            for layer, active, disabled in state:
                layer.enable_adapters(True)
                layer.set_adapter(active)
                if disabled:
                    layer.enable_adapters(False)


@torch.no_grad()
def lora_delta(module: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """{plain base weight name: current scale * alpha/r * B@A} for every layer carrying `adapter` (cpu, float32)."""
    return {f"{name}.weight": layer.get_delta_weight(adapter).detach().float().cpu()
            for name, layer in _layers_with(module, adapter)}


@torch.no_grad()
def merge_lora(module: torch.nn.Module, adapters: list[str],
               scales: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Merge `adapters` into the base weights (W += scale * alpha/r * B@A), then remove every LoRA layer.

    Adapters not named are discarded. `scales` overrides set_adapter_scale per adapter.
    Returns {plain parameter name: new weight (cpu)} for the weights that changed; afterwards
    `module` is a plain module with its original parameter names and no peft state.
    """
    layers = _lora_layers(module)
    known = {a for _, m in layers for a in m.lora_A}
    for a in list(adapters) + list(scales or {}):
        if a not in known:
            raise UserError(f"this module has no LoRA adapter named {a!r}")
    for a, s in (scales or {}).items():
        set_adapter_scale(module, a, s)
    changed = {}
    for name, layer in layers:
        base = layer.get_base_layer()
        use = [a for a in adapters if a in layer.lora_A]
        if layer.merged:
            layer.unmerge()
        if use:
            delta = sum(layer.get_delta_weight(a) for a in use)
            base.weight.add_(delta.to(base.weight.dtype))
            changed[f"{name}.weight"] = base.weight.detach().cpu().clone()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, base)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in module.__dict__:
            delattr(module, attr)
    return changed
