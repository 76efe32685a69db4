"""Concept Ablation (ca), DoCo (doco) and Selective Amnesia (sa): fine-tuning on images the model draws itself."""
import pytest
import torch

from igmu.errors import UserError
from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
import igmu.methods  # noqa: F401  (registers the methods)
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.noise import diffusion_loss, diffusion_target, predicted_x0
from igmu.diffusion.sampling import concept_latents
from igmu.methods.doco import PatchDiscriminator, project_conflicting
from igmu.methods.train import parameter_group
from igmu.methods.sa import fisher_diagonal

DATA = ["n_images=4", "sample_steps=2"]
CA_FAST = DATA + ["iterations=12", "lr=1e-3"]
SA_FAST = DATA + ["iterations=6", "lr=1e-3", "n_replay_images=4", "n_fisher=2", "fisher_timesteps=4"]
DOCO_FAST = DATA + ["iterations=6", "warm_up=3", "batch_size=4", "lr=1e-2"]


def _base(kind, tiny_sd1, tiny_sd2):
    return str(tiny_sd1 if kind == "sd1" else tiny_sd2)


def _kv_names(unet):
    return sorted(f"unet.{n}" for n, _ in parameter_group(unet, "crossattn_kv"))


def _probe(pipe, prompt: str, n=4, guidance=3.0, seed=11, repeat=1):
    """Latents of `prompt` drawn by `pipe`'s own model (n, with the given guidance and seed: the same call as
    a method's data generation reproduces its training images), each repeated `repeat` times and noised
    at fixed random timesteps: (x0, x_t, t, noise, scheduler)."""
    x0, _ = concept_latents(pipe, pipe.unet, [prompt], n, 2, guidance, seed)
    x0 = x0.repeat(repeat, 1, 1, 1)
    sched = adapter_for(pipe).train_scheduler
    g = torch.Generator().manual_seed(seed + 1)
    t = torch.randint(0, 1000, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return x0, sched.add_noise(x0, noise, t), t, noise, sched


@torch.no_grad()
def _pred(pipe, xt, t, prompt):
    e = adapter_for(pipe).encode([prompt])[0].expand(len(xt), -1, -1)
    return pipe.unet(xt, t, encoder_hidden_states=e).sample


# ---- CA --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_ca_changes_only_kv_and_pulls_target_prediction_to_anchor(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    # the pure ablation term towards the frozen model's anchor prediction (on these untrained models the
    # prior-preservation term, whose targets are far from their predictions, would dominate)
    sets = CA_FAST + ["anchor_model=frozen", "prior_loss_weight=0"]
    art = run_erase(base, "ca", ["circle"], "square", [], None, sets, tmp_path / "a")
    manifest, tensors = load_artifact(art)
    orig, edited = load_model(base), load_model(str(art))
    assert manifest["method"] == "ca" and manifest["cost"]["params_changed"] > 0
    assert sorted(tensors) == _kv_names(orig.unet)  # attn2 to_k / to_v, all of them, nothing else
    _, xt, t, _, _ = _probe(orig, "square")  # the training distribution: images of the anchor
    goal = _pred(orig, xt, t, "square")
    before = (_pred(orig, xt, t, "circle") - goal).norm()
    after = (_pred(edited, xt, t, "circle") - goal).norm()
    assert after < 0.5 * before  # the target now predicts what the model predicts for the anchor


def test_ca_noise_based_lowers_the_target_denoising_loss_on_anchor_images(tiny_sd2, tmp_path):
    base = str(tiny_sd2)  # v-prediction: the noise-based target is v, not the noise
    sets = DATA + ["iterations=12", "lr=1e-2", "loss=noise-based", "prior_loss_weight=0"]
    art = run_erase(base, "ca", ["circle"], "square", [], None, sets, tmp_path / "a")
    orig, edited = load_model(base), load_model(str(art))
    x0, xt, t, noise, sched = _probe(orig, "square", guidance=6.0, seed=0, repeat=4)  # CA's training images
    y = diffusion_target(sched, x0, noise, t)
    before = ((_pred(orig, xt, t, "circle") - y) ** 2).mean()
    after = ((_pred(edited, xt, t, "circle") - y) ** 2).mean()
    assert after < 0.98 * before  # (an untrained model moves little through K/V alone; the v target it does)


def test_ca_anchor_model_current_equals_frozen_on_the_first_step_only(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    run = lambda extra, d: load_artifact(run_erase(base, "ca", ["circle"], None, [], None,  # noqa: E731
                                                   DATA + ["prior_loss_weight=0"] + extra, tmp_path / d))[1]
    one_c, one_f = run(["iterations=1"], "c1"), run(["iterations=1", "anchor_model=frozen"], "f1")
    assert all(torch.equal(one_c[k], one_f[k]) for k in one_c)  # before any update the two targets coincide
    three_c, three_f = run(["iterations=3"], "c3"), run(["iterations=3", "anchor_model=frozen"], "f3")
    assert any(not torch.equal(three_c[k], three_f[k]) for k in three_c)  # afterwards sg[current] != frozen


def _gaps(orig, edited, xt, t, target, anchor, kept):
    """Distances of the target's and the kept concept's predictions from the anchor's, before and after."""
    p = {(m, c): _pred(pipe, xt, t, c) for m, pipe in (("o", orig), ("e", edited)) for c in (target, anchor, kept)}
    gap = lambda m, c: (p[(m, c)] - p[(m, anchor)]).norm().item()  # noqa: E731
    return gap("o", target), gap("e", target), gap("o", kept), gap("e", kept)


def test_ca_on_the_mini_model_moves_target_more_than_preserved(tmp_path):
    # the tiny test models are untrained (all prompts encode alike); only a trained model can show that
    # the ablation is specific to the target
    sets = ["n_images=8", "sample_steps=8", "iterations=25", "lr=3e-3", "n_preserve_images=4"]
    art = run_erase("mini", "ca", ["circle"], "square", ["star"], None, sets, tmp_path / "a")
    orig, edited = load_model("mini"), load_model(str(art))
    _, xt, t, _, _ = _probe(orig, "square", n=8)
    tgt_before, tgt_after, kept_before, kept_after = _gaps(orig, edited, xt, t, "circle", "square", "star")
    assert tgt_after < 0.5 * tgt_before  # "circle" now predicts (nearly) what "square" predicts
    assert kept_after > 0.7 * kept_before  # "star" stays as far from "square" as it was


# ---- SA --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_sa_trains_its_parameter_group(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    tensors = load_artifact(run_erase(base, "sa", ["circle"], "square", [], None, SA_FAST + ["train_method=xattn"],
                                      tmp_path / "a"))[1]
    xattn = {f"unet.{n}" for n, _ in parameter_group(load_model(base).unet, "xattn")}
    assert tensors and set(tensors) <= xattn  # only cross-attention parameters moved


def test_sa_on_the_mini_model_maps_target_to_surrogate_and_keeps_replayed(tmp_path):
    sets = ["n_images=8", "n_replay_images=8", "sample_steps=8", "iterations=25", "lr=1e-3", "n_fisher=4",
            "fisher_timesteps=8"]
    art = run_erase("mini", "sa", ["circle"], "square", ["star"], None, sets, tmp_path / "a")
    orig, edited = load_model("mini"), load_model(str(art))
    _, xt, t, _, _ = _probe(orig, "square", n=8)  # surrogate images
    tgt_before, tgt_after, kept_before, kept_after = _gaps(orig, edited, xt, t, "circle", "square", "star")
    assert tgt_after < 0.7 * tgt_before  # on surrogate images "circle" now denoises like "square"
    assert kept_after > 0.6 * kept_before  # the replayed "star" keeps its own prediction


def test_sa_full_trains_every_parameter_and_ewc_holds_the_important_ones(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    sets = SA_FAST + ["iterations=8", "weight_decay=0", "n_fisher=4"]
    free = load_artifact(run_erase(base, "sa", ["circle"], None, ["star"], None, sets + ["lmbda=0"],
                                   tmp_path / "a"))[1]
    held = load_artifact(run_erase(base, "sa", ["circle"], None, ["star"], None, sets + ["lmbda=1e6"],
                                   tmp_path / "b"))[1]
    orig = load_model(base)
    params = dict(orig.unet.named_parameters())
    assert len(free) > 0.9 * len(params)  # train_method full: (nearly) every UNet tensor moves
    # the replay data's Fisher, as SA computes it, at the original weights
    named = list(orig.unet.named_parameters())
    for _, p in named:
        p.requires_grad_(True)
    x0, _ = concept_latents(orig, orig.unet, ["star"], 4, 2, 7.5, 1)
    e = adapter_for(orig).encode(["star"])[0].expand(4, -1, -1)
    fisher = fisher_diagonal(orig, orig.unet, named, x0, e, 4, torch.Generator().manual_seed(0))
    assert all((f >= 0).all() for f in fisher.values()) and sum(f.sum() for f in fisher.values()) > 0
    cost = lambda ts: sum((fisher[k[5:]] * (v - params[k[5:]].detach()) ** 2).sum() for k, v in ts.items())  # noqa
    assert cost(held) < 0.25 * cost(free)  # the EWC penalty keeps the Fisher-weighted drift small


def test_fisher_scales_the_timestep_subsample_to_the_full_sum(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    named = [(n, p) for n, p in pipe.unet.named_parameters() if "attn2.to_v" in n]
    for _, p in named:
        p.requires_grad_(True)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    e = adapter_for(pipe).encode(["circle"])[0]
    f = fisher_diagonal(pipe, pipe.unet, named, x0, e, 1, torch.Generator().manual_seed(3))
    # with one timestep (t = 0) the estimate is (T * grad l_0)^2, the official sum's scale
    loss = diffusion_loss(pipe, pipe.unet, x0, e, torch.Generator().manual_seed(3), t=torch.tensor([0]))
    g = torch.autograd.grad(loss * 1000, [p for _, p in named])
    assert all(torch.allclose(f[n], gi ** 2, rtol=1e-4, atol=1e-12) for (n, _), gi in zip(named, g))


# ---- DoCo ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_doco_changes_only_kv(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "doco", ["circle"], "square", ["star"], None, DOCO_FAST, tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert manifest["method"] == "doco" and manifest["cost"]["params_changed"] > 0
    assert sorted(tensors) == _kv_names(load_model(base).unet)


def test_doco_surgery_changes_the_update(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    on = load_artifact(run_erase(base, "doco", ["circle"], "square", [], None, DOCO_FAST, tmp_path / "a"))[1]
    off = load_artifact(run_erase(base, "doco", ["circle"], "square", [], None, DOCO_FAST + ["surgery=false"],
                                  tmp_path / "b"))[1]
    assert any(not torch.equal(on[k], off[k]) for k in on)


def test_project_conflicting_removes_only_the_conflicting_component():
    g_p = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), None]
    g_u = [torch.tensor([-1.0, 1.0]), torch.tensor([3.0, 1.0]), torch.tensor([-2.0, -2.0]), torch.tensor([5.0])]
    out = project_conflicting(g_u, g_p)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0]))  # conflicting: projected onto g_p's normal plane
    assert torch.equal(out[1], g_u[1])  # agreeing: unchanged
    assert torch.allclose(out[2], torch.zeros(2))  # directly opposed: nothing left
    assert torch.equal(out[3], g_u[3])  # no preservation gradient: unchanged
    half = project_conflicting(g_u, g_p, strength=0.5)
    assert torch.allclose(half[0], torch.tensor([-0.5, 1.0]))
    assert all(torch.dot(o.flatten(), p.flatten()) >= -1e-6 for o, p in zip(out[:3], g_p[:3]))


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_predicted_x0_inverts_the_training_target(kind, tiny_sd1, tiny_sd2):
    sched = adapter_for(load_model(_base(kind, tiny_sd1, tiny_sd2))).train_scheduler
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    xt = sched.add_noise(x0, noise, t)
    assert torch.allclose(predicted_x0(sched, xt, diffusion_target(sched, x0, noise, t), t), x0, atol=1e-3)


def test_patch_discriminator_fits_the_latent_size():
    g = torch.Generator().manual_seed(0)
    for size, blocks in [(8, 1), (16, 2), (64, 4)]:
        d = PatchDiscriminator(4, size, g)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in d.model) == blocks + 1
        assert d(torch.randn(2, 4, size, size, generator=g)).shape == (2, 1, 3, 3)
    a, b = (PatchDiscriminator(4, 16, torch.Generator().manual_seed(1)) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---- shared ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,sets", [("ca", DATA + ["iterations=2"]),
                                         ("sa", DATA + ["iterations=2", "n_fisher=1", "fisher_timesteps=2"]),
                                         ("doco", DATA + ["iterations=3", "warm_up=1", "batch_size=2"])])
def test_deterministic(method, sets, tiny_sd1, tmp_path):
    a = load_artifact(run_erase(str(tiny_sd1), method, ["star"], None, [], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(str(tiny_sd1), method, ["star"], None, [], None, sets, tmp_path / "b"))[1]
    assert a and set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["ca", "sa", "doco"])
def test_bad_inputs(method, tiny_sd1, plain_unet_model, tmp_path):
    base = str(tiny_sd1)
    out = tmp_path / "a"
    for targets, anchor, msg in [(["circle", " "], None, "empty target"), (["circle", "circle"], None, "twice"),
                                 (["circle"], "circle", "anchor"), (["circle"], "square " * 40, "at most")]:
        with pytest.raises(UserError, match=msg):
            run_erase(base, method, targets, anchor, [], None, ["iterations=2"], out)
    with pytest.raises(UserError, match="bad value"):
        run_erase(base, method, ["circle"], None, [], None, ["lr=0"], out)
    if method == "doco":
        with pytest.raises(UserError, match=r"warm_up \(5\) must be smaller than iterations \(5\)"):
            run_erase(base, method, ["circle"], None, [], None, ["iterations=5", "warm_up=5"], out)
    bad_model_sets = ["train_method=xattn"] if method == "sa" else []
    with pytest.raises(UserError, match="cross-attention|no parameters"):
        run_erase(str(plain_unet_model), method, ["circle"], None, [], None, bad_model_sets, out)
    assert not out.exists()
