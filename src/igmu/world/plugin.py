"""The mini world as a plug-in: importing this module registers, in core's registries,
  * its judges: `mini` (the detector) and `mini-clip` (mini-CLIP zero-shot);
  * its metric networks: mini-CLIP features (FID/KID) and CLIP score, the detector's LPIPS-style distance;
  * a World that claims the mini world's own images (the mini model, an artifact of it, or a mini-world task)
    and makes those networks the defaults there, and only there;
  * its task source (`--task mini:<name>`) and its planner world (`igmu plan --model mini`).
Core code never imports it; igmu.plugins.load_plugins() does.
"""
from __future__ import annotations

from ..evaluation import judges as _judges
from ..evaluation import registry as _reg
from ..tasks import planner as _planner
from ..tasks import task as _task

_MINI_JUDGES = ("mini", "mini-clip")
_CARD = {"validated": "against the renderer's ground truth: scripts/bench_eval.py --validate (docs/evaluation.md)"}


def _judge(cls_name):
    def make(spec):
        from . import evaluation

        return getattr(evaluation, cls_name)(spec)
    make.name = cls_name
    return make


_judges.REGISTRY["mini"] = _judge("MiniJudge")
_judges.REGISTRY["mini-clip"] = _judge("MiniClipJudge")


@_reg.register("features", "mini-clip", {
    "what": "mini-CLIP image embeddings (128-d, L2-normalised): FID/KID features for the mini world's 32x32 images",
    "weights": "shipped: igmu/world/assets/judges/clip", "source": "igmu's mini world", **_CARD})
def _features(spec, opts):
    from .evaluation import MiniClipFeatures

    return MiniClipFeatures()


@_reg.register("clip-score", "mini-clip", {
    "what": "CLIP score with the mini CLIP (torchmetrics' CLIPScore update, the mini CLIP's input scaling)",
    "weights": "shipped: igmu/world/assets/judges/clip", "source": "igmu's mini world", **_CARD})
def _clip_score(spec, opts):
    from .evaluation import MiniClipScorer

    return MiniClipScorer()


@_reg.register("perceptual", "mini", {
    "what": "LPIPS-style distance (uniform-weight baseline) on the mini detector's activations after blocks 2, 4, 6",
    "weights": "shipped: igmu/world/assets/judges/detector", "source": "igmu's mini world (Zhang et al. 2018 baseline)",
    **_CARD})
def _perceptual(spec, opts):
    from .evaluation import MiniPerceptual

    return MiniPerceptual()


def _is_mini_model(spec) -> bool:
    """The mini model itself, or an artifact whose base is the mini model."""
    import json
    from pathlib import Path

    from ..models.load import MINI_DIR

    if spec is None:
        return False
    if str(spec) == "mini":
        return True
    p = Path(str(spec))
    try:
        if p.resolve() == Path(MINI_DIR).resolve():
            return True
        if (p / "manifest.json").is_file():
            return _is_mini_model(json.loads((p / "manifest.json").read_text()).get("base_model"))
    except (OSError, ValueError):
        return False
    return False


def _claims(ctx: _reg.EvalContext) -> bool:
    task = ctx.task
    if task is not None and getattr(task, "judge", None) in _MINI_JUDGES:
        return True
    return any(_is_mini_model(s) for role, s in ctx.models.items() if not ctx.pregenerated)


_reg.register_world(_reg.World("mini", _claims, {"features": "mini-clip", "clip-score": "mini-clip",
                                                 "perceptual": "mini"}))


def _mini_task(name):
    from .tasks import mini_task

    return mini_task(name)


def _mini_task_names():
    from .tasks import mini_task_names

    return mini_task_names()


_task.register_source("mini", _mini_task, _mini_task_names)


class _LazyPlanner:
    """The mini planner world, imported on first use (its renderer records are built then)."""
    name = "mini"

    def __getattr__(self, attr):
        from .tasks import MiniPlanner

        return getattr(MiniPlanner(), attr)


_planner.register_planner_world(_LazyPlanner())
