"""SDXL, SD3 and FLUX through the same API (docs/architectures.md): the architecture adapters reproduce each
pipeline's own sampling, every supported (method, architecture) cell erases, exports to the plain diffusers
pipeline class and generates, every other cell refuses in one line, the closed-form edits move the target
onto the anchor, and the support matrix in the docs is the registry's."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from igmu.artifacts import export_merged, load_artifact, load_model
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.noise import diffusion_target, noised, predicted_x0
from igmu.diffusion.sampling import sample_latents
from igmu.diffusion.schedules import FlowMatchTrainSchedule
from igmu.erase import run_erase
from igmu.errors import UserError
from igmu.generate import GenSettings, run_generate
from igmu.methods import REGISTRY
from igmu.methods.support import supported

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_bitwise", ROOT / "scripts" / "check_bitwise.py")
_cb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cb)
BUDGET = _cb.BUDGET  # the small per-method budgets of the bitwise check
EXTRA = {("sdxl", "scissorhands"): ["trim=attn1"]}  # the official trim layers are SD 1.x block names
PIPELINE = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
PROMPT = "a red circle on a dark background"
# a representative subset runs in the default suite; every cell runs with `make test-all`
FAST = {("sdxl", "uce"), ("sdxl", "esd"), ("sdxl", "sld"), ("sdxl", "mace"), ("sd3", "uce"), ("sd3", "esd"),
        ("sd3", "negprompt"), ("sd3", "sld"), ("flux", "uce"), ("flux", "esd-lora"), ("flux", "negprompt"),
        ("flux", "rece")}


def _base(request, family: str) -> str:
    return str(request.getfixturevalue(f"tiny_{family}"))


# ---- the adapters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_adapter_sampling_is_the_pipelines_own(family, request):
    """igmu's guided sampling loop through the adapter (conditioning, time ids / pooled embeddings, FLUX's
    packing and distilled guidance, the flow scheduler's shifted timesteps) gives the pipeline's images."""
    pipe = load_model(_base(request, family))
    a = adapter_for(pipe)
    assert a.family == family
    noise = torch.randn(a.latent_shape(2), generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square"]
    ref = a.pipeline_images(prompts, None, noise, 4, 4.0, *a.image_size)
    cond = a.encode(prompts)[0]
    uncond = cond if family == "flux" else a.prompt_conditioning(prompts, None)[1]
    x, _ = sample_latents(a, None, cond, uncond, 4, 4.0, noise=noise)
    assert np.array_equal(a.decode(x), ref)


def test_sdxl_conditioning_is_the_pipelines(tiny_sdxl):
    pipe = load_model(str(tiny_sdxl))
    a = adapter_for(pipe)
    cond, mask = a.encode(["a red circle"])
    pe, _, pooled, _ = pipe.encode_prompt(["a red circle"], device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(a.text_rows(cond), pe) and torch.equal(a.pooled(cond), pooled)
    assert a.kv_input_dim == pe.shape[-1] == 64  # both encoders' widths, concatenated (real SDXL: 768 + 1280)
    assert torch.equal(a.encode_ids(a.tokenize(["a red circle"])), cond)  # the prompt-attack path agrees


def test_sdxl_prompt_attack_reaches_both_text_encoders(tiny_sdxl):
    from igmu.diffusion.prompt_attack import encode_slots, optimise_prompt

    a = adapter_for(load_model(str(tiny_sdxl)))
    ids = a.tokenize(["zorb a red circle"])
    table = a.token_embeddings()
    assert table.weight.shape[1] == 64  # one slot vector spans both tables
    same = encode_slots(a, ids, [1], table.weight[ids[0, 1]].unsqueeze(0))
    assert torch.allclose(same, a.encode_ids(ids), atol=1e-6)  # a slot holding the token's own embeddings
    other = encode_slots(a, ids, [1], table.weight[ids[0, 2]].unsqueeze(0))
    assert (a.text_rows(other)[..., :32] - a.text_rows(same)[..., :32]).abs().max() > 0  # encoder 1 sees it
    assert (a.text_rows(other)[..., 32:] - a.text_rows(same)[..., 32:]).abs().max() > 0  # encoder 2 too
    adv = optimise_prompt(a, "a red circle", lambda c: c.pow(2).mean(), k=2, steps=2,
                          generator=torch.Generator().manual_seed(0))
    assert len(adv.losses) == 2 and adv.text.endswith("a red circle")


def test_flow_matching_forward_process_and_targets():
    sched = FlowMatchTrainSchedule(1000)
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    xt = sched.add_noise(x0, eps, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], 0.5 * x0[1] + 0.5 * eps[1])
    v = diffusion_target(sched, x0, eps, t)
    assert torch.equal(v, eps - x0)
    assert torch.allclose(predicted_x0(sched, xt, v, t), x0, atol=1e-5)
    xt2, t2, eps2 = noised(sched, x0, torch.Generator().manual_seed(0))
    assert torch.allclose(xt2, sched.add_noise(x0, eps2, t2)) and t2.dtype == torch.int64


def test_t5_tokenizer_is_built_offline(tiny_flux):
    pipe = load_model(str(tiny_flux))
    tok = pipe.tokenizer_2
    assert type(tok).__name__.startswith("T5Tokenizer") and tok.pad_token_id == 0 and tok.eos_token_id == 1
    ids = tok("a red circle").input_ids
    assert len(ids) == 4 and ids[-1] == 1 and tok.decode(ids[:-1]) == "a red circle"  # one token per word
    assert len(tok("zorbx!").input_ids) > 2  # unknown words still tokenize (pieces)


def test_unknown_pipeline_refused_in_one_line():
    class Odd:
        transformer = torch.nn.Linear(2, 2)
    with pytest.raises(UserError) as e:
        adapter_for(Odd())
    assert "\n" not in str(e.value) and "its denoiser is a Linear" in str(e.value) and "FLUX" in str(e.value)


# ---- every cell of the support matrix -------------------------------------------------------------------------


CELLS = [pytest.param(f, m, marks=() if (f, m) in FAST else pytest.mark.slow, id=f"{f}-{m}")
         for f in PIPELINE for m in supported(f)]


@pytest.mark.parametrize("family,method", CELLS)
def test_supported_method_erases_exports_and_generates(family, method, request, tmp_path):
    import diffusers

    base = _base(request, family)
    art = run_erase(base, method, ["circle"], None, [], None, BUDGET.get(method, []) + EXTRA.get((family, method), []),
                    tmp_path / "art")
    manifest, tensors = load_artifact(art)
    if REGISTRY[method].kind == "weights":
        assert tensors and manifest["cost"]["params_changed"] > 0
        out = export_merged(art, tmp_path / "merged")
        merged = getattr(diffusers, PIPELINE[family]).from_pretrained(str(out))  # plain diffusers loads it
        for key, value in list(tensors.items())[:3]:
            comp, name = key.split(".", 1)
            assert torch.equal(dict(getattr(merged, comp).named_parameters())[name].detach(), value)
    else:
        assert manifest["sampling"]["type"] == REGISTRY[method].sampling_type
    settings = GenSettings(steps=2)
    run_generate(str(art), [PROMPT], 1, 0, settings, tmp_path / "gen")
    rec = json.loads((tmp_path / "gen" / "generations.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "gen" / rec["file"]).is_file()
    if REGISTRY[method].kind == "sampling":  # the inference-time change acts on generation
        run_generate(base, [PROMPT], 1, 0, settings, tmp_path / "plain")
        from PIL import Image
        a, b = (np.asarray(Image.open(p / rec["file"])) for p in (tmp_path / "gen", tmp_path / "plain"))
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_other_cell_refuses_in_one_line(family, request):
    pipe = load_model(_base(request, family))
    label = adapter_for(pipe).label
    others = [m for m in sorted(REGISTRY) if m not in supported(family)]
    assert others or family == "sdxl"
    for m in others:
        with pytest.raises(UserError) as e:
            REGISTRY[m]().check_architecture(pipe)
        msg = str(e.value)
        assert "\n" not in msg and m in msg and label in msg


def test_refusal_through_the_cli_is_one_line_and_writes_nothing(tiny_flux, tmp_path):
    from typer.testing import CliRunner

    from igmu.cli import app

    out = tmp_path / "fmn"
    res = CliRunner().invoke(app, ["erase", "--method", "fmn", "--model", str(tiny_flux), "--target", "circle",
                                   "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: method fmn does not support FLUX.1")


def test_family_defaults_follow_the_official_scripts(tiny_sdxl, tiny_flux, tmp_path):
    m = json.loads((run_erase(str(tiny_flux), "esd", ["circle"], None, [], None, ["iterations=1", "sample_steps=2"],
                              tmp_path / "e") / "manifest.json").read_text())["config"]
    assert m["lr"] == 1e-4 and m["guidance_scale"] == 3.5 and m["iterations"] == 1  # esd_flux.py; --set wins
    m = json.loads((run_erase(str(tiny_sdxl), "uce", ["circle"], None, [], None, [], tmp_path / "u")
                    / "manifest.json").read_text())["config"]
    assert m["token_rows"] == "last" and m["preserve_scale"] == 1.0  # uce_sd_erase.py, the SDXL route


# ---- closed-form edits move the target onto the anchor ---------------------------------------------------------


def test_uce_on_sdxl_maps_target_kv_onto_anchor(tiny_sdxl, tmp_path):
    base = str(tiny_sdxl)
    art = run_erase(base, "uce", ["circle"], "square", ["star"], None, ["lamb=0.01"], tmp_path / "a")
    _, tensors = load_artifact(art)
    assert all(".attn2.to_" in k and k.startswith("unet.") for k in tensors)
    assert all(v.shape[1] == 64 for v in tensors.values())  # the concatenated embedding width
    orig, edited = load_model(base), load_model(str(art))
    a = adapter_for(orig)
    cond, mask = a.encode(["circle", "square", "star"])
    hs = a.text_rows(cond)
    last = [int(m.sum()) - 2 for m in mask]  # the word token (one token each here)
    tgt, anc, keep = hs[0, last[0]], hs[1, last[1]], hs[2, last[2]]
    for p0, p1 in zip(a.kv_projections(), adapter_for(edited).kv_projections()):
        for l0, l1 in ((p0.k, p1.k), (p0.v, p1.v)):
            assert (l1(tgt) - l0(anc)).norm() < 0.05 * (l0(tgt) - l0(anc)).norm()  # target now reads as the anchor
            assert (l1(keep) - l0(keep)).norm() < 0.05 * l0(keep).norm()  # the preserved concept stays


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_uce_on_mmdit_maps_target_text_projections_onto_anchor(family, request, tmp_path):
    base = _base(request, family)
    art = run_erase(base, "uce", ["circle"], "square", ["star"], None, ["lamb=0.01"], tmp_path / "a")
    _, tensors = load_artifact(art)
    assert set(tensors) == {"transformer.context_embedder.weight",
                            "transformer.time_text_embed.text_embedder.linear_1.weight"}
    orig, edited = load_model(base), load_model(str(art))
    a, b = adapter_for(orig), adapter_for(edited)
    cond, mask = a.encode(["circle", "square", "star"])
    hs, pooled = a.text_rows(cond), a.pooled(cond)
    rows = [[hs[i, s + int(mask[i, s:s + n].sum()) - 2] for s, n in a.token_segments()] for i in range(3)]
    for p0, p1 in zip(a.text_projections(), b.text_projections()):
        W0, W1 = p0.linear.weight, p1.linear.weight
        pairs = zip(rows[0], rows[1], rows[2]) if p0.reads == "tokens" else [(pooled[0], pooled[1], pooled[2])]
        for tgt, anc, keep in pairs:  # the edited weight maps the target where the original put the anchor
            assert (F.linear(tgt, W1) - F.linear(anc, W0)).norm() < 0.05 * (F.linear(tgt, W0) - F.linear(anc, W0)).norm()
            assert (F.linear(keep, W1) - F.linear(keep, W0)).norm() < 0.05 * F.linear(keep, W0).norm()


def test_flux_negative_prompt_needs_true_cfg(tiny_flux, tmp_path):
    with pytest.raises(UserError, match="true classifier-free guidance"):
        run_generate(str(tiny_flux), [PROMPT], 1, 0, GenSettings(steps=2, negative_prompt="circle"), tmp_path / "g")
    art = run_erase(str(tiny_flux), "negprompt", ["circle"], None, [], None, [], tmp_path / "n")
    assert load_artifact(art)[0]["sampling"] == {"type": "negative_prompt", "negative_prompt": "circle",
                                                 "true_cfg_scale": 2.0}
    with pytest.raises(UserError, match="FLUX.1 only"):  # the option means nothing where CFG samples
        run_erase("mini", "negprompt", ["circle"], None, [], None, ["true_cfg_scale=2"], tmp_path / "x")


def test_support_matrix_in_the_docs_is_the_registrys():
    spec = importlib.util.spec_from_file_location("make_doc", ROOT / "scripts" / "make_architectures_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "docs" / "architectures.md").read_text()
    assert mod.render(text) == text, "docs/architectures.md is stale: python scripts/make_architectures_doc.py"
