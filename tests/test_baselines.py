"""Inference-time baselines (negprompt, SLD): artifacts that change how the pipeline samples."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from igmu.errors import UserError
from igmu.generate import GenSettings, generate_images, initial_noise, run_generate
from igmu.artifacts import SAMPLING_VERSION, export_merged, load_artifact, load_model
from igmu.erase import run_erase
from igmu.methods.sld import PRESETS, SLDParams, safety_guidance, sld_combine, sld_sample

FAST = GenSettings(steps=6, guidance=5.0)
PROMPTS = ["a red circle", "a blue star on a hex mark"]
SEEDS = [0, 1]


def _base(kind, tiny_sd1, tiny_sd2):
    return str(tiny_sd1 if kind == "sd1" else tiny_sd2)


def _params(**over):
    values = dict(PRESETS["medium"], **over)
    return SLDParams(safety_concept="circle", preset="medium", **values)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_negprompt_artifact_samples_like_base_with_that_negative_prompt(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "negprompt", ["circle", "star"], None, [], None, [], tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert manifest["sampling"] == {"type": "negative_prompt", "negative_prompt": "circle, star"}
    assert manifest["version"] == SAMPLING_VERSION and tensors == {}
    assert manifest["cost"]["params_changed"] == 0 and manifest["cost"]["erase_seconds"] < 1

    from diffusers import DiffusionPipeline
    pipe, plain = load_model(str(art)), load_model(base)
    assert isinstance(pipe, DiffusionPipeline) and pipe.igmu_sampling == manifest["sampling"]
    got = generate_images(pipe, PROMPTS, SEEDS, FAST)
    want = generate_images(plain, PROMPTS, SEEDS, GenSettings(steps=6, guidance=5.0, negative_prompt="circle, star"))
    assert np.array_equal(got, want)  # bitwise: the same pipeline call
    assert not np.array_equal(got, generate_images(plain, PROMPTS, SEEDS, FAST))
    # a user negative prompt is combined as "user, targets"
    user = GenSettings(steps=6, guidance=5.0, negative_prompt="blurry")
    both = GenSettings(steps=6, guidance=5.0, negative_prompt="blurry, circle, star")
    assert np.array_equal(generate_images(pipe, PROMPTS, SEEDS, user), generate_images(plain, PROMPTS, SEEDS, both))


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_sld_artifact_changes_images_and_scale_zero_is_plain_cfg(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "sld", ["circle", "star"], None, [], None, ["sld_warmup_steps=1"], tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert tensors == {} and manifest["cost"]["params_changed"] == 0
    assert manifest["cost"]["unet_passes_per_step"] == 3
    assert manifest["sampling"] == {"type": "sld", "safety_concept": "circle, star", "preset": "medium",
                                    "sld_guidance_scale": 1000.0, "sld_warmup_steps": 1, "sld_threshold": 0.01,
                                    "sld_momentum_scale": 0.3, "sld_mom_beta": 0.4}
    plain = generate_images(load_model(base), PROMPTS, SEEDS, FAST)
    sld = generate_images(load_model(str(art)), PROMPTS, SEEDS, FAST)
    assert np.abs(sld.astype(int) - plain).mean() > 0.2  # guidance away from the concept moves the samples

    off = run_erase(base, "sld", ["circle"], None, [], None, ["sld_guidance_scale=0"], tmp_path / "off")
    assert np.array_equal(generate_images(load_model(str(off)), PROMPTS, SEEDS, FAST), plain)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_sld_matches_diffusers_safe_pipeline(scheduler, tiny_sd1):
    """Same latents and settings as the deprecated diffusers StableDiffusionPipelineSafe (epsilon model)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipelineSafe

    pipe = load_model(str(tiny_sd1))
    cls = DDIMScheduler if scheduler == "ddim" else DPMSolverMultistepScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    safe = StableDiffusionPipelineSafe(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                       unet=pipe.unet, scheduler=cls.from_config(pipe.scheduler.config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = "circle"
    lat = torch.cat([initial_noise(pipe, s, 16, 16) for s in SEEDS])
    plain = pipe(prompt=PROMPTS, latents=lat, num_inference_steps=6, guidance_scale=5.0, height=16, width=16,
                 output_type="np").images
    for preset, warmup in [("medium", 2), ("strong", 0)]:
        p = dict(PRESETS[preset], sld_warmup_steps=warmup)
        ref = safe(prompt=PROMPTS, latents=lat, num_inference_steps=6, guidance_scale=5.0, height=16, width=16,
                   output_type="np", **p).images
        spec = SLDParams(safety_concept="circle", preset=preset, **p).model_dump()
        got = sld_sample(pipe, PROMPTS, None, lat, 6, 5.0, 16, 16, spec)
        assert np.abs(got - ref).max() < 1e-5
        assert np.abs(got - plain).max() > 1e-3  # the match is not the trivial one


def test_sld_is_batched_and_seeded_like_generate_images(tiny_sd2, tmp_path):
    art = run_erase(str(tiny_sd2), "sld", ["circle"], None, [], None, ["preset=max"], tmp_path / "a")
    pipe = load_model(str(art))
    alone = generate_images(pipe, ["a blue star"], [3], FAST)
    together = generate_images(pipe, ["a red circle", "a blue star"], [9, 3], FAST, batch_size=2)
    assert np.array_equal(alone[0], together[1])


def test_guidance_math_on_fixed_tensors():
    g = torch.Generator().manual_seed(0)
    e_u, e_p = (torch.randn(2, 4, 3, 3, generator=g) * 0.05 for _ in range(2))
    e_s = e_p - torch.linspace(-0.02, 0.02, 72).reshape(2, 4, 3, 3)  # diff spans the threshold and the clamp
    nu = torch.randn(2, 4, 3, 3, generator=g) * 0.01
    p = _params(sld_warmup_steps=0)
    gamma, nu1 = safety_guidance(e_u, e_p, e_s, nu, 0, p)
    d = e_p - e_s
    mu = torch.where(d < 0.01, torch.minimum(torch.ones_like(d), 1000 * d.abs()), torch.zeros_like(d))
    want = mu * (e_s - e_u) + 0.3 * nu
    assert torch.allclose(gamma, want) and torch.allclose(nu1, 0.4 * nu + 0.6 * want)
    assert (mu == 0).any() and (mu == 1).any() and ((mu > 0) & (mu < 1)).any()  # threshold and clamp both act
    # warm-up: not applied, but the momentum still builds up
    gamma_w, nu_w = safety_guidance(e_u, e_p, e_s, nu, 0, _params(sld_warmup_steps=1))
    assert torch.equal(gamma_w, torch.zeros_like(gamma_w)) and torch.allclose(nu_w, nu1)
    # s_S = 0 and no momentum: exactly classifier-free guidance
    zero = torch.zeros_like(nu)
    out, _ = sld_combine(e_u, e_p, e_s, zero, 5, 7.5, _params(sld_guidance_scale=0.0))
    assert torch.equal(out, e_u + 7.5 * (e_p - e_u))
    # eq. 3: eps_u + s_g (eps_p - eps_u - gamma)
    out, _ = sld_combine(e_u, e_p, e_s, nu, 0, 7.5, p)
    assert torch.allclose(out, e_u + 7.5 * (e_p - e_u - want))


def test_v_prediction_guidance_is_the_epsilon_guidance_converted():
    """For v-models SLD acts on epsilon units: v_bar converted back to epsilon equals eps_bar."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 3, generator=g)
    eps = [torch.randn(1, 4, 3, 3, generator=g) * 0.05 for _ in range(3)]
    p = _params(sld_warmup_steps=0)
    nu_e = nu_v = torch.zeros_like(x)
    for a_bar in (0.3, 0.7):
        alpha, sigma = a_bar ** 0.5, (1 - a_bar) ** 0.5
        v = [(e - sigma * x) / alpha for e in eps]  # v = alpha eps - sigma x0, x = alpha x0 + sigma eps
        e_bar, nu_e = sld_combine(*eps, nu_e, 0, 5.0, p)
        v_bar, nu_v = sld_combine(*v, nu_v, 0, 5.0, p, k=alpha)
        assert torch.allclose(alpha * v_bar + sigma * x, e_bar, atol=1e-5)
        assert torch.allclose(nu_v, nu_e, atol=1e-6)


def test_export_of_sampling_artifact_is_refused(tiny_sd1, tmp_path):
    for method in ("negprompt", "sld"):
        art = run_erase(str(tiny_sd1), method, ["circle"], None, [], None, [], tmp_path / method)
        with pytest.raises(UserError, match=r"inference-time.*igmu generate --model"):
            export_merged(art, tmp_path / f"merged-{method}")
        with pytest.raises(UserError, match="cannot be merged"):
            export_merged(art, tmp_path / f"merged2-{method}", base=str(tiny_sd1))
        assert not (tmp_path / f"merged-{method}").exists()


def test_bad_sld_options_and_specs(tiny_sd1, tmp_path):
    with pytest.raises(UserError, match="bad value for sld option preset"):
        run_erase(str(tiny_sd1), "sld", ["circle"], None, [], None, ["preset=extreme"], tmp_path / "a")
    with pytest.raises(UserError, match="bad value for sld option sld_mom_beta"):
        run_erase(str(tiny_sd1), "sld", ["circle"], None, [], None, ["sld_mom_beta=2"], tmp_path / "a")
    art = run_erase(str(tiny_sd1), "negprompt", ["circle"], None, [], None, [], tmp_path / "n")
    m = json.loads((art / "manifest.json").read_text())
    m["sampling"] = {"type": "teleport"}
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="'teleport', which this igmu does not know"):
        load_model(str(art))


def test_cli_lists_inference_time_methods_and_refuses_export(tiny_sd1, tmp_path):
    r = subprocess.run([sys.executable, "-m", "igmu.cli", "methods"], capture_output=True, text=True)
    assert r.returncode == 0
    rows = {ln.split("│")[1].strip(): ln for ln in r.stdout.splitlines() if ln.count("│") > 2}
    assert "inference-time" in rows["negprompt"] and "inference-time" in rows["sld"]
    art = run_erase(str(tiny_sd1), "sld", ["circle"], None, [], None, [], tmp_path / "a")
    r = subprocess.run([sys.executable, "-m", "igmu.cli", "export", str(art), "--out", str(tmp_path / "m")],
                       capture_output=True, text=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "igmu generate --model" in lines[0], r.stderr


def test_run_generate_with_sld_artifact(tiny_sd1, tmp_path):
    art = run_erase(str(tiny_sd1), "sld", ["hex mark"], None, [], None, [], tmp_path / "a")
    out = run_generate(str(art), ["a person with a hex mark"], 2, 0, FAST, tmp_path / "g")
    recs = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all((out / r["file"]).is_file() for r in recs)
