"""Methods III: SPEED, CURE, GLoCE, AdaVD (closed-form / training-free), SAFREE, SEOT (inference-time),
STEREO, SDD, Task Vectors (fine-tuning). Each runs on tiny SD1/SD2 pipelines and on the mini model; the
math of each is checked where it has a closed form."""
import numpy as np
import pytest
import torch

from igmu.artifacts import load_artifact, load_model
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.sampling import pipeline_images
from igmu.erase import run_erase
from igmu.errors import UserError
from igmu.generate import GenSettings, generate_images
from igmu.methods import REGISTRY, get_method

NEW = ["speed", "cure", "gloce", "adavd", "safree", "seot", "stereo", "sdd", "taskvector"]
# tiny budgets: every option named here is a published-default knob shrunk for a seconds-long test
FAST = {
    "gloce": ["sample_steps=3", "n_gen=1", "st_timestep=0", "end_timestep=3", "n_anchor=2"],
    "stereo": ["iterations=2", "ti_steps=2", "gallery_images=2", "gallery_steps=2", "sample_steps=3",
               "n_iterations=1", "num_adv_concepts=1"],
    "sdd": ["iterations=2", "sample_steps=3", "lr=1e-3"],
    "taskvector": ["iterations=2", "images=2", "sample_steps=2", "lr=1e-3"],
}
FORGET, RETAIN = "a red circle on a dark background", "a blue square on a light background"


def _images(pipe, steps=3):
    return generate_images(pipe, [FORGET, RETAIN], [0, 0], GenSettings(steps=steps)).astype(float)


def test_registered_listed_and_strength_knobs_are_options():
    from typer.testing import CliRunner

    from igmu.cli import app

    out = CliRunner().invoke(app, ["methods"]).output
    for m in NEW:
        assert m in REGISTRY and m in out
    for name, cls in REGISTRY.items():  # the calibration hooks name real options, a direction and a cost role
        fields = set(cls.Config.model_fields)
        assert set(cls.strength) <= fields and set(cls.budget) <= fields - set(cls.strength), name
        assert all(v in ("lr", "up", "down") or isinstance(v, list) for v in cls.strength.values()), name
    assert all(REGISTRY[m].strength for m in NEW)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@pytest.mark.parametrize("method", NEW)
def test_runs_on_tiny_pipelines(method, kind, tiny_sd1, tiny_sd2, tmp_path):
    base = str(tiny_sd1 if kind == "sd1" else tiny_sd2)
    art = run_erase(base, method, ["circle"], None, [], None, FAST.get(method, []), tmp_path / "a")
    manifest, tensors = load_artifact(art)
    m = get_method(method)
    pipe, orig = load_model(str(art)), load_model(base)
    if m.kind == "sampling":
        assert not tensors and manifest["sampling"]["type"] == m.sampling_type
        assert pipe.igmu_sampler is not None
    else:
        assert tensors and manifest["cost"]["params_changed"] > 0
        if method in ("speed", "cure"):
            assert all(".attn2.to_" in k for k in tensors)
    img, ref = _images(pipe), _images(orig)
    assert np.isfinite(img).all() and img.shape == ref.shape
    if method not in ("sdd", "gloce"):  # 2 SDD steps at EMA 0.999, a 3-step GLoCE gate: pixels may stay
        assert np.abs(img - ref).max() > 0  # the method changed what is drawn


def _on_mini(methods, tmp_path):
    orig = load_model("mini")
    ref = _images(orig, steps=4)
    for method in methods:
        art = run_erase("mini", method, ["circle"], None, [], None, FAST.get(method, []), tmp_path / method)
        img = _images(load_model(str(art)), steps=4)
        assert np.isfinite(img).all() and img.shape == ref.shape, method


def test_closed_form_and_inference_time_methods_run_on_the_mini_model(tmp_path):
    """SPEED, CURE, AdaVD, SAFREE and SEOT erase the circle on the shipped mini model and sample."""
    _on_mini(["speed", "cure", "adavd", "safree", "seot"], tmp_path)


@pytest.mark.slow
def test_feature_and_fine_tuning_methods_run_on_the_mini_model(tmp_path):
    """GLoCE, STEREO, SDD and Task Vectors on the shipped mini model (tiny budgets)."""
    _on_mini(["gloce", "stereo", "sdd", "taskvector"], tmp_path)


# ---- closed-form maths -----------------------------------------------------------------------------------


def test_speed_edit_keeps_the_retain_null_space_and_the_null_prior():
    from igmu.methods.speed import SPEEDConfig, speed_delta

    g = torch.Generator().manual_seed(0)
    d = 12
    W = torch.randn(6, d, generator=g, dtype=torch.float64)
    c, a = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    T, A = c[:, None] @ c[None], a[:, None] @ c[None]
    retain = torch.randn(4, d, generator=g, dtype=torch.float64) * 3
    K2 = torch.randn(d, 2, generator=g, dtype=torch.float64)
    cfg = SPEEDConfig(aug_num=0)
    delta = speed_delta(W, T, A, retain, K2, cfg, torch.Generator().manual_seed(0))
    assert (retain @ delta.T).abs().max() < 1e-8  # retained embeddings keep their outputs exactly
    assert (delta @ K2).abs().max() < 1e-8  # so does the null-prompt prior (lamb = 0)
    # the target's output moves towards the anchor's
    assert ((W + delta) @ c - W @ a).norm() < (W @ c - W @ a).norm()


def test_cure_expansion_and_projector():
    from igmu.methods.cure import expansion, spectral_projector

    s = torch.tensor([3.0, 1.0], dtype=torch.float64)
    r = s ** 2 / (s ** 2).sum()
    assert torch.allclose(expansion(s, 1.0), r) and torch.allclose(expansion(s, 2.0), 2 * r / (r + 1))
    assert expansion(s, 1e9).min() > 0.999  # alpha -> infinity: every direction fully projected
    E = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]], dtype=torch.float64)
    P = spectral_projector(E, 2.0)
    assert torch.allclose(P @ torch.tensor([0, 0, 1.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(P, P.T) and 0 < P[0, 0] < P[1, 1] < 1  # energy-weighted, stronger on the big direction


def test_cure_leaves_directions_outside_the_forget_space(tiny_sd1, tmp_path):
    art = run_erase(str(tiny_sd1), "cure", ["circle"], None, ["square"], None, [], tmp_path / "c")
    orig, pipe = load_model(str(tiny_sd1)), load_model(str(art))
    from igmu.methods.cure import concept_rows

    f, r = concept_rows(adapter_for(orig), ["circle"]), concept_rows(adapter_for(orig), ["square"])
    q, _ = torch.linalg.qr(torch.cat([f, r]).T)  # basis of the forget and retain rows
    z = torch.randn(f.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = z - q @ (q.T @ z)  # a direction orthogonal to all of them: P_dis z = P_f z - P_f P_r z = 0
    (name, a0), = adapter_for(orig).cross_attentions()[:1]
    a1 = dict(adapter_for(pipe).cross_attentions())[name]
    assert torch.allclose(a1.to_v.weight.double() @ z, a0.to_v.weight.double() @ z, atol=1e-5)
    assert (a1.to_v.weight.double() @ f.T).norm() < (a0.to_v.weight.double() @ f.T).norm()


def test_adavd_decomposition():
    from igmu.methods.adavd import erased_component, gram_schmidt

    g = torch.Generator().manual_seed(0)
    t = torch.randn(1, 5, 8, generator=g)
    spec = {"token_sim": False, "sigmoid_p": 100.0, "sigmoid_eps": 0.93, "sigmoid_s": 2.0}
    x = t.clone()
    out = x - erased_component(x, t, spec)
    assert out[:, 1:].abs().max() < 1e-5 and torch.equal(out[:, 0], x[:, 0])  # the start token is kept
    y = torch.randn(5, 8, generator=g)
    y = y - (y * t[0]).sum(-1, keepdim=True) / (t[0] * t[0]).sum(-1, keepdim=True) * t[0]  # orthogonal to t
    assert (erased_component(y[None], t, spec)).abs().max() < 1e-5
    on = {**spec, "token_sim": True}
    reflected = torch.cat([x[:, :1], -x[:, 1:]], 1)
    assert torch.allclose(x - erased_component(x, t, on), reflected, atol=1e-2)  # s = 2: a target token is reflected
    Y = torch.randn(3, 8, generator=g, dtype=torch.float64)
    B = gram_schmidt(Y) @ Y
    off = B @ B.T - torch.diag(torch.diag(B @ B.T))
    assert off.abs().max() < 1e-10


def test_conditioning_schedule_matches_the_plain_call(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    a = adapter_for(pipe)
    lat = torch.randn(2, *a.latent_shape(1)[1:], generator=torch.Generator().manual_seed(0))
    plain = pipeline_images(pipe, [FORGET, RETAIN], None, lat, 3, 5.0, 16, 16)
    cond = a.encode([FORGET, RETAIN])[0]
    same = pipeline_images(pipe, [FORGET, RETAIN], None, lat, 3, 5.0, 16, 16, conditioning_at=lambda s: cond)
    assert np.array_equal(plain, same)
    other = a.encode([RETAIN, RETAIN])[0]
    late = pipeline_images(pipe, [FORGET, RETAIN], None, lat, 3, 5.0, 16, 16,
                           conditioning_at=lambda s: cond if s < 2 else other)
    assert not np.array_equal(plain[0], late[0]) and np.array_equal(plain[1], late[1])


def test_seot_soft_weight_and_target_rows(tiny_sd1):
    from igmu.methods.seot import SEOTConfig, soft_weight, suppressed

    chi = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    s0 = torch.linalg.svdvals(chi)
    s1 = torch.linalg.svdvals(soft_weight(chi, 1.0))
    assert torch.allclose(s1.sort().values, (s0 * torch.exp(-s0)).sort().values)
    a = adapter_for(load_model(str(tiny_sd1)))
    spec = SEOTConfig().model_dump()
    plain = a.encode([RETAIN, FORGET])[0]
    assert torch.equal(suppressed(a, RETAIN, ["circle"], spec), plain[0])  # names no target: unchanged
    edited = suppressed(a, FORGET, ["circle"], spec)
    ids = a.token_ids(FORGET)
    changed = (edited != plain[1]).any(-1).nonzero().flatten().tolist()
    assert ids.index(a.token_ids("circle", special=False)[0]) in changed and 0 not in changed
    assert set(changed) <= {ids.index(a.token_ids("circle", special=False)[0])} | set(range(len(ids) - 1, 32))


def test_safree_filter(tiny_sd1):
    from igmu.methods.safree import SAFREEConfig, beta_steps, pooled, projector, safree_embedding

    assert beta_steps(0.0, 10, "nudity") == 0 and beta_steps(1.0, 10, "nudity") == 10
    assert beta_steps(0.5333, 10, "nudity") == 5  # the midpoint of f_beta
    a = adapter_for(load_model(str(tiny_sd1)))
    P_c = projector(pooled(a, a.tokenize(["circle"])).T)
    spec = SAFREEConfig().model_dump()
    plain, filtered, last = safree_embedding(a, FORGET, P_c, spec)
    moved = (filtered != plain).any(-1).nonzero().flatten()
    n = len(a.token_ids(FORGET))
    assert len(moved) >= 1 and moved.min() >= 1 and moved.max() <= n - 2  # only word tokens are replaced
    assert (filtered[moved] @ P_c).abs().max() < 1e-6  # ... by embeddings without the concept component
    assert 0 <= last <= spec["up_t"]


def test_gloce_gate():
    from igmu.methods.gloce import gloce_output

    D = 4
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(0))
    layer = [{"gate": torch.eye(D, dtype=torch.float64)[:1], "gate_mean": torch.zeros(D, dtype=torch.float64),
              "degen": torch.eye(D, dtype=torch.float64)[:, :1], "update": torch.eye(D, dtype=torch.float64)[:, :1],
              "bias": torch.ones(D, dtype=torch.float64), "debias": torch.zeros(D, dtype=torch.float64),
              "center": 2.0, "slope": 1e4}]
    assert torch.allclose(gloce_output(x, layer, 1.0), x)  # gate closed (score <= 1 < centre)
    layer[0]["center"] = -1.0
    expect = torch.ones(D) + torch.nn.functional.pad(x[..., :1], (0, D - 1))
    assert torch.allclose(gloce_output(x, layer, 1.0), expect, atol=1e-6)  # gate open: mu_s + V_s V_s^T (x - mu_t)


def test_stereo_apg():
    from igmu.methods.stereo import apg

    g = torch.Generator().manual_seed(0)
    d, c = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    assert torch.allclose(apg(d, c, 1.0), d, atol=1e-6)  # eta = 1 (official default): plain guidance
    orth = apg(d, c, 0.0)
    assert (orth * c).flatten(1).sum(1).abs().max() < 1e-5


def test_taskvector_is_linear_in_alpha(tiny_sd1, tmp_path):
    sets = FAST["taskvector"]
    one = load_artifact(run_erase(str(tiny_sd1), "taskvector", ["circle"], None, [], None, sets, tmp_path / "a"))[1]
    two = load_artifact(run_erase(str(tiny_sd1), "taskvector", ["circle"], None, [], None, sets + ["alpha=2"],
                                  tmp_path / "b"))[1]
    orig = dict(load_model(str(tiny_sd1)).unet.named_parameters())
    k = max(one, key=lambda k: (one[k] - orig[k.split(".", 1)[1]]).abs().max())
    d1, d2 = one[k] - orig[k.split(".", 1)[1]].detach(), two[k] - orig[k.split(".", 1)[1]].detach()
    assert torch.allclose(d2, 2 * d1, atol=1e-6) and d1.abs().max() > 0


def test_sdd_trains_cross_attention_into_the_ema(tiny_sd1, tmp_path):
    a = load_artifact(run_erase(str(tiny_sd1), "sdd", ["circle"], None, [], None, FAST["sdd"], tmp_path / "a"))[1]
    b = load_artifact(run_erase(str(tiny_sd1), "sdd", ["circle"], None, [], None, FAST["sdd"], tmp_path / "b"))[1]
    assert a and all(".attn2." in k for k in a) and all(torch.equal(a[k], b[k]) for k in a)  # deterministic
    orig = dict(load_model(str(tiny_sd1)).unet.named_parameters())
    k = next(iter(a))
    step = (a[k] - orig[k.split(".", 1)[1]]).abs().max()
    # the EMA moved by (1 - 0.999) x (0.999 x first step + both steps), each Adam step at most ~lr 1e-3
    assert 0 < step < 1e-3 * 1e-3 * 3 * 1.05


# ---- bad input: one clear line -----------------------------------------------------------------------------


@pytest.mark.parametrize("method,targets,anchor,preserve,sets,match", [
    ("speed", ["circle"], "circle", [], [], "is one of the targets"),  # the validation layer, before the method
    ("cure", ["circle"], None, ["circle"], [], "cannot be both erased and preserved"),
    ("gloce", ["circle"], None, [], ["st_timestep=5", "end_timestep=5"], "must be above st_timestep"),
    ("gloce", ["circle"], None, ["red circle", "circle"], FAST["gloce"], "cannot be both erased and preserved"),
    ("gloce", ["circle"], None, [], ["sample_steps=3", "n_gen=1", "n_anchor=1", "st_timestep=1", "end_timestep=2"],
     "at least 2 anchor samples"),
    ("stereo", ["circle"], None, [], ["initializer_token=object"], "must be one token"),
    ("stereo", ["circle", "star"], None, [], [], "one concept at a time"),
    ("safree", ["circle"], None, [], ["mask_token_id=99999"], "not in this tokenizer"),
    ("taskvector", ["circle"], None, [], ["train_group=xattn", "edit_group=noxattn"], "shares no parameter"),
    ("adavd", ["circle"], None, [], ["sigmoid_eps=2"], "bad value"),
    ("sdd", ["circle"], None, [], ["ema_decay=1"], "bad value"),
])
def test_bad_input_is_one_line(method, targets, anchor, preserve, sets, match, tiny_sd1, tmp_path):
    with pytest.raises(UserError, match=match):
        run_erase(str(tiny_sd1), method, targets, anchor, preserve, None, sets, tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("method", ["adavd", "safree", "seot", "gloce"])
def test_malformed_sampling_spec_is_refused(method):
    with pytest.raises(UserError, match="malformed|no concepts|no targets"):
        get_method(method).sampler({"type": REGISTRY[method].sampling_type})

