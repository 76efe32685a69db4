import pytest
import torch

from igmu.errors import UserError
from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.sampling import sample_until
from igmu.methods.spm import sample_anchors, spm_targets


FAST = ["iterations=8", "sample_steps=3", "lr=1e-2", "warmup_fraction=0", "anchor_samples=2"]


def _rank(delta: torch.Tensor) -> int:
    """Numerical rank of a weight change (float32 round-off of W + dW - W is ~1e-7 |W|)."""
    s = torch.linalg.svdvals(delta.flatten(1).double())
    return int((s > 1e-3 * s[0]).sum())


def _preds(base, pipe, prompts, stop=1):
    """Predictions of `pipe` for each prompt on a latent of the first prompt, drawn as SPM draws its
    training latents (the base model's sampler, stopped after `stop` of 3 steps)."""
    e = adapter_for(base).encode(prompts)[0]
    xt, t = sample_until(base, base.unet, e[:1], adapter_for(base).encode([""])[0], 3, stop, 3.0,
                         torch.Generator().manual_seed(5))
    with torch.no_grad():
        return pipe.unet(xt.expand(len(prompts), -1, -1, -1), t, encoder_hidden_states=e).sample


def _toward(before, after, i_from, i_to):
    """How far prediction i_from moved along the direction to the original prediction i_to, and its cosine."""
    d = (before[i_to] - before[i_from]).flatten()
    m = (after[i_from] - before[i_from]).flatten()
    along = torch.dot(m, d) / d.norm()
    return along.item(), (along / m.norm()).item()


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_spm_changes_only_its_layers_by_rank_one_and_steers_target_to_surrogate(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = str(tiny_sd1 if kind == "sd1" else tiny_sd2)
    art = run_erase(base, "spm", ["circle"], "square", [], None, FAST + ["la_strength=0"], tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert manifest["method"] == "spm" and manifest["config"]["rank"] == 1
    assert manifest["cost"]["params_changed"] > 0
    orig, edited = load_model(base), load_model(str(art))
    layers = spm_targets(orig.unet)
    assert any(".attn1." in n for n in layers) and any(".ff." in n for n in layers)
    assert all(".attentions." in n for n in layers)  # inside the transformer blocks only
    assert sorted(tensors) == sorted(f"unet.{n}.weight" for n in layers)  # every membrane layer, nothing else
    params = dict(orig.unet.named_parameters())
    assert all(_rank(w - params[k.split(".", 1)[1]].detach()) == 1 for k, w in tensors.items())
    before = _preds(orig, orig, ["circle", "square"])
    after = _preds(orig, edited, ["circle", "square"])
    along, cos = _toward(before, after, 0, 1)
    assert along > 0 and cos > 0.5  # the target's prediction moved towards (eta = 1: past) the surrogate's


def test_latent_anchoring_holds_the_anchored_prompts(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    runs = {la: load_model(str(run_erase(base, "spm", ["circle"], "square", ["star"], None,
                                            FAST + [f"la_strength={la}"], tmp_path / f"la{la}")))
            for la in (0, 1000)}
    orig = load_model(base)
    before = _preds(orig, orig, ["circle", "star"])
    drift = {la: (_preds(orig, p, ["circle", "star"])[1] - before[1]).norm() for la, p in runs.items()}
    assert drift[1000] < 0.25 * drift[0]  # with Latent Anchoring the preserved prompt barely moves


def test_spm_on_the_mini_model_moves_target_more_than_preserved(tmp_path):
    # the tiny test models are untrained: all their prompts encode alike, so only a trained model
    # can show that the membrane separates the target from a preserved concept
    sets = ["iterations=20", "sample_steps=3", "lr=1e-2", "warmup_fraction=0", "la_strength=10"]
    art = run_erase("mini", "spm", ["circle"], "square", ["star"], None, sets, tmp_path / "a")
    orig, edited = load_model("mini"), load_model(str(art))
    for stop in (1, 2):
        before = _preds(orig, orig, ["circle", "square", "star"], stop)
        after = _preds(orig, edited, ["circle", "square", "star"], stop)
        along, cos = _toward(before, after, 0, 1)
        kept = (after[2] - before[2]).norm().item()
        assert cos > 0.5 and along > 1.5 * kept


def test_spm_two_targets_are_two_merged_membranes(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    one = load_artifact(run_erase(base, "spm", ["circle"], None, [], None, FAST, tmp_path / "a"))[1]
    two = load_artifact(run_erase(base, "spm", ["circle", "star"], None, ["square"], None, FAST, tmp_path / "b"))[1]
    assert set(one) == set(two)
    orig = dict(load_model(base).unet.named_parameters())
    for k in list(two)[:5]:
        assert _rank(two[k] - orig[k.split(".", 1)[1]].detach()) == 2  # two rank-1 membranes, summed


def test_spm_is_deterministic(tiny_sd1, tmp_path):
    sets = ["iterations=2", "sample_steps=3", "anchor_samples=1"]
    a = load_artifact(run_erase(str(tiny_sd1), "spm", ["star"], None, [], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(str(tiny_sd1), "spm", ["star"], None, [], None, sets, tmp_path / "b"))[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_anchor_sampler_follows_the_official_recipe():
    target = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0))
    s = sample_anchors(target, 50, torch.Generator().manual_seed(1))
    assert s.shape == (50, 6, 8)
    ratio = s.flatten(1).norm(dim=1) / target.norm()
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.2 + 1e-5  # U(0.8, 1.2) x the target's norm
    cos = torch.nn.functional.cosine_similarity(s.flatten(1), target.flatten(1))
    assert cos.abs().max() < 0.9 and len({round(c, 6) for c in cos.tolist()}) == 50  # random directions


def test_spm_bad_inputs(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    for bad, msg in [("rank=0", "bad value"), ("la_strength=-1", "bad value"), ("iterations=0", "bad value"),
                     ("warmup_fraction=1", "bad value"), ("sample_steps=1", "bad value"), ("nope=1", "no option")]:
        with pytest.raises(UserError, match=msg):
            run_erase(base, "spm", ["circle"], None, [], None, [bad], tmp_path / "a")
    with pytest.raises(UserError, match="empty target"):
        run_erase(base, "spm", ["circle", " "], None, [], None, FAST, tmp_path / "a")
    with pytest.raises(UserError, match="twice"):
        run_erase(base, "spm", ["circle", "circle"], None, [], None, FAST, tmp_path / "a")
    with pytest.raises(UserError, match="at most"):
        run_erase(base, "spm", ["circle"], "square " * 40, [], None, FAST, tmp_path / "a")
    assert not (tmp_path / "a").exists()
