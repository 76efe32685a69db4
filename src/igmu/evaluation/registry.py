"""Registries of the evaluation's metric networks, each entry with a card, and of the worlds that claim images.

Three kinds of metric network, chosen by a spec `NAME` or `NAME:ARG` (what --features, --clip and
--perceptual take):

  features     FID/KID feature network: an nn.Module, uint8 N x 3 x H x W -> float64 N x D, with `num_features`
               (torchmetrics' FrechetInceptionDistance / KernelInceptionDistance take it as `feature=`)
  clip-score   CLIP score model: `score(images, texts) -> per-pair CLIP score`
  perceptual   perceptual distance: `distance(a, b) -> per-pair distance` (LPIPS)

Real networks register here (nets.py: inception, clip, lpips); a world plug-in registers its own (the mini
world: mini-clip features and score, the mini detector's distance) and a `World` that claims the images it
made, with its defaults. `resolve()` picks, per kind: the spec the user gave; else the default of a world
that claims the images; else the real network when its weights are given; else one line saying what to pass.
The mini world's networks are never the default for other images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError

KINDS = {"features": "FID/KID feature network", "clip-score": "CLIP-score model", "perceptual": "perceptual distance"}
OPTION = {"features": "--features", "clip-score": "--clip", "perceptual": "--perceptual"}


@dataclass
class MetricOptions:
    """What the user chose (None: decide from the images) and where real weights are (local paths only)."""
    features: str | None = None
    clip: str | None = None
    perceptual: str | None = None
    fid_weights: str | None = None
    lpips_weights: str | None = None
    lpips_net: str = "alex"
    device: str | None = None


@dataclass
class Entry:
    kind: str
    name: str
    build: Callable  # (spec, MetricOptions) -> the network object
    card: dict


@dataclass
class EvalContext:
    """What is known about the images to score: the task, the model specs by role, pre-generated or not."""
    task: object = None
    models: dict = field(default_factory=dict)
    pregenerated: bool = False


@dataclass
class World:
    """A plug-in world: `claims(ctx)` says whether the images are its own; `defaults` maps kind -> spec."""
    name: str
    claims: Callable[[EvalContext], bool]
    defaults: dict


_ENTRIES: dict[tuple[str, str], Entry] = {}
_WORLDS: dict[str, World] = {}
_BUILT: dict[tuple, object] = {}


def register(kind: str, name: str, card: dict):
    """Decorator: register `build(spec, opts)` as the network `name` of `kind`, with its card."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")

    def deco(build):
        _ENTRIES[(kind, name)] = Entry(kind, name, build, dict(card, name=name, kind=kind))
        return build
    return deco


def register_world(world: World) -> None:
    _WORLDS[world.name] = world


def _load() -> None:
    """The plug-ins' entries (the real networks register in nets.py, imported by the package)."""
    from ..plugins import load_plugins

    load_plugins()


def entries(kind: str | None = None) -> list[Entry]:
    _load()
    return [e for (k, _), e in sorted(_ENTRIES.items()) if kind in (None, k)]


def worlds() -> list[World]:
    _load()
    return list(_WORLDS.values())


def get(kind: str, spec: str, opts: MetricOptions | None = None):
    """The network for a spec, built once per (kind, spec, weights)."""
    _load()
    opts = opts or MetricOptions()
    name = spec.split(":", 1)[0].strip()
    entry = _ENTRIES.get((kind, name))
    if entry is None:
        have = ", ".join(e.name + (":PATH" if e.card.get("arg") == "path" else "") for e in entries(kind))
        raise UserError(f"unknown {KINDS[kind]} {spec!r} for {OPTION[kind]}; available: {have}")
    key = (kind, spec, opts.fid_weights, opts.lpips_weights, opts.lpips_net, opts.device)
    if key not in _BUILT:
        _BUILT[key] = entry.build(spec, opts)
    return _BUILT[key]


def claiming_world(ctx: EvalContext) -> World | None:
    for w in worlds():
        if w.claims(ctx):
            return w
    return None


def resolve(kind: str, opts: MetricOptions, ctx: EvalContext) -> str:
    """The spec to use for `kind`: the user's, a claiming world's default, or the real network (weights given);
    otherwise one UserError line naming what to pass."""
    chosen = {"features": opts.features, "clip-score": opts.clip, "perceptual": opts.perceptual}[kind]
    if chosen:
        return chosen
    w = claiming_world(ctx)
    if w is not None and w.defaults.get(kind):
        return w.defaults[kind]
    if kind == "features":
        if opts.fid_weights:
            return "inception"
        raise UserError("quality (FID/KID) on these images needs a feature network: pass --fid-weights PATH "
                        "(the standard FID Inception weights, pt_inception-2015-12-05-6726825d.pth) or "
                        "--features clip:PATH (a local CLIP folder)")
    if kind == "clip-score":
        raise UserError("alignment (CLIP score, CSDR) on these images needs a CLIP model: pass --clip clip:PATH "
                        "(a local CLIP folder saved with save_pretrained; nothing is downloaded)")
    if opts.lpips_weights:
        return "lpips"
    raise UserError("the perceptual distance (LPIPS) on these images needs its backbone weights: pass "
                    "--lpips-weights PATH (torchvision's alexnet-owt-7be5be79.pth, or vgg16-397923af.pth with "
                    "--lpips-net vgg)")
