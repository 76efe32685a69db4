"""EvalIGMU sanity checks on the mini world: a model against itself, a model with its target word broken
by hand, the cache, pre-generated images, and one-line errors."""
import json

import numpy as np
import pytest

from igmu.evaluation.cache import Cache
from igmu.evaluation.evaluate import EvalConfig, evaluate
from igmu.tasks import load_task

from cli_helpers import cli as _cli
from cli_helpers import one_line_error as _one_line_error


@pytest.fixture(scope="module")
def broken_striped(tmp_path_factory):
    """The mini model with the word 'striped' broken by hand: its token embedding replaced by 'plain''s."""
    from igmu.world.erasure_checks import save_broken_word_model

    return save_broken_word_model(tmp_path_factory.mktemp("broken") / "mini-no-striped", "striped", "plain")


@pytest.fixture(scope="module")
def small_task():
    t = load_task("mini:style-striped")
    t.images_per_prompt = 1
    t.attack.prompts = 0
    return t


def test_original_against_itself(small_task, tmp_path):
    res = evaluate("mini", "mini", small_task, EvalConfig(), Cache(tmp_path / "c"))
    a = res["aggregates"]
    f = a["forgetting"]
    assert f["target_shown"]["value"] == f["target_shown_original"]["value"] >= 0.9
    assert f["target_shown"]["n"] == len(small_task.forget()["explicit"])
    p = a["preservation"]
    assert p["as_expected"]["value"] == p["as_expected_original"]["value"] >= 0.9
    assert p["perceptual_distance"]["value"] == 0 and p["perceptual_identical_share"] == 1
    assert a["quality"]["retain"]["fid"]["value"] == pytest.approx(0, abs=1e-6)
    assert abs(a["quality"]["retain"]["kid"]["value"]) < 2e-3
    al = a["alignment"]
    assert al["clip_score_retain"]["value"] == al["clip_score_retain_original"]["value"]
    # CSDR as IGMU defines it: the original's own CSDR is the reference row (not zero: its forget images show
    # the style, which the stripped prompt lacks); a model identical to the original has exactly that CSDR
    assert al["csdr"] == al["csdr_original"] and al["csdr"]["lo"] <= al["csdr"]["value"] <= al["csdr"]["hi"]
    assert al["csdr"]["n"] == len(small_task.forget()["explicit"]) and al["csdr"]["value"] > 0
    assert res["settings"]["metrics"]["features"]["spec"] == "mini-clip"  # the mini world's own images
    for rec in res["records"]:
        assert {"role", "set", "group", "prompt", "seed", "key", "target_shown"} <= set(rec)
    assert res["schema"] == "igmu-results" and res["schema_version"] == 1


def test_csdr_is_zero_when_the_forget_prompts_are_their_stripped_prompts(tmp_path):
    from igmu.tasks import task_from_dict

    prompts = ["a red circle on a dark background", "a blue square on a light background"]
    t = task_from_dict({"name": "t", "category": {"kind": "style"}, "targets": ["striped"], "images_per_prompt": 2,
                        "prompts": {"forget": {"explicit": [{"prompt": p, "stripped": p} for p in prompts]},
                                    "retain": {"r": [{"prompt": prompts[0], "expect": ["circle"]}]}}})
    res = evaluate("mini", "mini", t, EvalConfig(aspects=["alignment"]), Cache(tmp_path / "c"))
    assert res["aggregates"]["alignment"]["csdr"]["value"] == pytest.approx(0, abs=1e-9)


def test_broken_target_word_is_forgotten_and_cache_is_reused(small_task, broken_striped, tmp_path):
    cache = tmp_path / "c"
    res = evaluate("mini", str(broken_striped), small_task, EvalConfig(aspects=["forgetting"]), Cache(cache))
    f = res["aggregates"]["forgetting"]
    assert f["target_shown_original"]["value"] >= 0.9
    assert f["target_shown"]["value"] <= 0.2  # high forgetting
    assert res["cache"]["misses"]["images"] == 2 * len(small_task.forget()["explicit"])
    # a second run with one more aspect regenerates none of the images it already has
    res2 = evaluate("mini", str(broken_striped), small_task, EvalConfig(aspects=["forgetting", "robustness"]),
                    Cache(cache))
    assert res2["aggregates"]["forgetting"] == f
    n_rob = sum(len(v) for g, v in small_task.forget().items() if g != "explicit")
    assert res2["cache"]["misses"]["images"] == 2 * n_rob and res2["cache"]["misses"]["judge"] == 2 * n_rob
    assert res2["cache"]["hits"]["images"] == 2 * len(small_task.forget()["explicit"])
    # the synonym "stripy" was not broken: robustness sees the style come back
    assert res2["aggregates"]["robustness"]["groups"]["synonym"]["target_shown"]["value"] >= 0.5


def test_attacks_in_the_robustness_aspect(small_task, broken_striped, tmp_path):
    t = small_task.model_copy(deep=True)
    t.attack.prompts = 2
    res = evaluate("mini", str(broken_striped), t, EvalConfig(aspects=["robustness"], attacks=["unlearndiffatk:tiny"]),
                   Cache(tmp_path / "c"))
    atk = res["aggregates"]["robustness"]["attacks"]["unlearndiffatk:tiny"]
    assert atk["asr"]["n"] == 2 and atk["asr"]["value"] >= atk["asr_no_attack"]["value"]
    assert atk["asr"]["lo"] <= atk["asr"]["value"] <= atk["asr"]["hi"]  # a Wilson interval
    assert atk["budget"]["name"] == "tiny" and atk["cost"]["n"] == 2
    for r in atk["prompts"]:
        assert r["success_no_attack"] or (r["adversarial_prompt"].endswith(r["prompt"]) and r["iterations"] >= 1)


def test_optimise_prompt_lowers_the_denoising_loss():
    import torch

    from igmu.diffusion.prompt_attack import optimise_prompt
    from igmu.diffusion.noise import diffusion_loss
    from igmu.diffusion.sampling import concept_latents
    from igmu.artifacts import load_model

    pipe = load_model("mini")
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    x0, _ = concept_latents(pipe, pipe.unet, ["a red circle on a dark background"], 2, 10, 5.0, 0)
    t = torch.tensor([500, 500])

    def loss_of(cond, fixed=False):
        return diffusion_loss(pipe, pipe.unet, x0, cond.expand(2, -1, -1), torch.Generator().manual_seed(0), t=t)
    adv = optimise_prompt(pipe, "a red square on a dark background", loss_of, k=3, steps=25, lr=0.05,
                          generator=torch.Generator().manual_seed(0))
    assert adv.losses[-1] < adv.losses[0]
    ids = pipe.tokenizer(adv.text, padding="max_length", max_length=adv.ids.shape[1]).input_ids
    assert ids == adv.ids[0].tolist()  # the adversarial prompt is real text that re-tokenizes to the same tokens


def test_pregenerated_images_in_igmu_layout(small_task, tmp_path):
    from PIL import Image

    from igmu.evaluation.cache import model_fingerprint
    from igmu.evaluation.evaluate import _Models

    cfg = EvalConfig(aspects=["forgetting", "preservation"])
    res = evaluate("mini", "mini", small_task, cfg, Cache(tmp_path / "c"))
    m = _Models({"original": "mini"}, Cache(tmp_path / "c"), cfg)
    root = tmp_path / "imgs" / small_task.name
    for which, groups in (("forget", {"explicit": small_task.forget()["explicit"]}), ("retain", small_task.retain())):
        (root).mkdir(parents=True, exist_ok=True)
        (root / f"{which}.json").write_text(json.dumps({small_task.name: {g: [r.prompt for r in recs]
                                                                         for g, recs in groups.items()}}))
        for method in ("original", "m"):
            d = root / which / method
            d.mkdir(parents=True)
            for i, (g, recs) in enumerate(groups.items()):
                imgs, _ = m.images("original", [(r.prompt, 0) for r in recs])
                for j, img in enumerate(imgs):
                    Image.fromarray(img).save(d / f"{i}_{j}_0.png")
    assert model_fingerprint("mini")
    out = tmp_path / "ev"
    r = _cli("evaluate", "--task", "mini:style-striped", "--images", str(tmp_path / "imgs"), "--layout", "igmu-task",
             "--method", "m",
             "--aspects", "forgetting,preservation", "-n", "1", "--out", str(out), "--cache", str(tmp_path / "c2"))
    assert r.returncode == 0, r.stderr
    got = json.loads((out / "results.json").read_text())["aggregates"]
    assert got["forgetting"]["target_shown"]["value"] == res["aggregates"]["forgetting"]["target_shown"]["value"]
    assert got["preservation"]["as_expected"]["value"] == res["aggregates"]["preservation"]["as_expected"]["value"]
    # bad input: mixed sizes, empty folder, layout mismatch
    bad = root / "retain" / "m" / "0_0_0.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(bad)
    args = ["evaluate", "--task", "mini:style-striped", "--layout", "igmu-task", "--method", "m", "--aspects",
            "preservation", "-n", "1"]
    _one_line_error(_cli(*args, "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "e1")), "mixed sizes")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli(*args, "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "e2")), "is empty")
    _one_line_error(_cli(*args[:-4], "--method", "nosuch", "--images", str(tmp_path / "imgs"), "--out",
                         str(tmp_path / "e3")), "layout mismatch")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_evaluate_bad_inputs(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\ncategory: {kind: style}\ntargets: [striped]\ncolour: red\n")
    out = str(tmp_path / "o")
    _one_line_error(_cli("evaluate", "--task", str(bad), "--unlearned", "mini", "--out", out), "unknown field 'colour'")
    _one_line_error(_cli("evaluate", "--task", "mini:nosuch", "--unlearned", "mini", "--out", out), "unknown mini task")
    _one_line_error(_cli("evaluate", "--task", "mini:style-striped", "--unlearned", "mini", "--aspects", "speed",
                         "--out", out), "unknown aspect")
    _one_line_error(_cli("evaluate", "--task", "mini:style-striped", "--unlearned", "mini", "--judge", "bogus",
                         "--out", out), "unknown judge")
    _one_line_error(_cli("evaluate", "--task", "mini:style-striped", "--out", out), "--unlearned")
    assert not (tmp_path / "o").exists()


def test_judge_not_installed_is_one_line(tmp_path, monkeypatch):
    import igmu.evaluation.judges as J
    from igmu.errors import UserError

    real = __import__

    def fake(name, *a, **k):
        if name == "nudenet" or name.startswith("nudenet."):
            raise ModuleNotFoundError("No module named 'nudenet'", name="nudenet")
        return real(name, *a, **k)
    monkeypatch.setattr("builtins.__import__", fake)
    J._LOADED.pop("nudenet", None)
    with pytest.raises(UserError, match="not installed"):
        J.get_judge("nudenet")
