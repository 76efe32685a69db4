"""The robustness battery: every attack at its tiny budget against UCE artifacts of tiny SD1 and SD2
(v-prediction) pipelines, the shared search mechanics, the `igmu attack` / `igmu attacks` commands, and
one-line errors for the calls an attack cannot serve."""
import json

import numpy as np
import pytest
import torch

from igmu.attacks.base import BUDGETS, contains_target, get_attack, load_all, run_attack, strip_target
from igmu.errors import UserError
from igmu.generate import GenSettings

from cli_helpers import cli, one_line_error

PROMPT = "a red circle on a dark background"
FAST = GenSettings(steps=3)


@pytest.fixture(scope="module")
def uce_pair(tiny_sd1, tiny_sd2, tmp_path_factory):
    """{kind: (unlearned pipe, original pipe, artifact path)} for UCE erasing 'circle' from tiny SD1 / SD2."""
    from igmu.erase import run_erase
    from igmu.artifacts import load_model

    out = {}
    for kind, base in (("sd1", tiny_sd1), ("sd2", tiny_sd2)):
        art = run_erase(str(base), "uce", ["circle"], None, [], None, [], tmp_path_factory.mktemp("uce") / kind)
        out[kind] = (load_model(str(art)), load_model(str(base)), art)
    return out


def never(imgs):
    return np.zeros(len(imgs), bool)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_every_attack_runs_at_tiny_budget(uce_pair, kind):
    un, orig, _ = uce_pair[kind]
    assert un.scheduler.config.prediction_type == ("epsilon" if kind == "sd1" else "v_prediction")
    for name in sorted(load_all()):
        res = run_attack(name, un, orig, "circle", [PROMPT], [0], "tiny", never, FAST, 0, "object")
        (r,) = res["records"]
        assert r["success"] is False and r["success_no_attack"] is False, name
        assert r["checks"] >= 2 and r["images_generated"] >= r["checks"], name  # the plain prompt, then candidates
        assert isinstance(r["adversarial_prompt"], str) and r["adversarial_prompt"], name
        assert r["_image"].dtype == np.uint8 and r["_image"].ndim == 3, name
        assert r["seconds"] >= 0 and res["budget"] == "tiny", name
        if name == "cce":
            assert set(r["embedding"]) == {"<cce>"} and res["shared_images"] == 2
            assert r["adversarial_prompt"] == f"<cce> {PROMPT}"


def test_an_attack_stops_at_the_first_success_and_is_deterministic(uce_pair):
    un, orig, _ = uce_pair["sd1"]
    calls = []

    def second_check(imgs):  # the plain prompt fails, the first candidate succeeds
        calls.append(len(imgs))
        return np.array([len(calls) >= 2] * len(imgs))

    r = run_attack("unlearndiffatk", un, orig, "circle", [PROMPT], [0], "tiny", second_check, FAST)["records"][0]
    assert r["success"] and not r["success_no_attack"] and r["checks"] == 2 and r["iterations"] == 2
    runs = [run_attack("p4d-k", un, orig, "circle", [PROMPT], [3], "tiny", never, FAST)["records"][0] for _ in range(2)]
    assert runs[0]["adversarial_prompt"] == runs[1]["adversarial_prompt"]
    assert np.array_equal(runs[0]["_image"], runs[1]["_image"])
    # a prompt the judge already sees the target in costs one image and no search
    r = run_attack("mma", un, orig, "circle", [PROMPT], [0], "tiny", lambda x: np.ones(len(x), bool), FAST)["records"][0]
    assert r["success"] and r["success_no_attack"] and r["iterations"] == 0 and r["images_generated"] == 1


def test_registry_budgets_and_declarations():
    reg = load_all()
    assert {"unlearndiffatk", "p4d-n", "p4d-k", "ringabell", "cce", "mma", "noiseprobe"} <= set(reg)
    for name in reg:
        a = get_attack(name)
        assert a.access in ("white-box", "text-encoder", "black-box") and a.source and a.title
        for b in BUDGETS:
            assert a.budget(b).model_dump() and a.cost(a.budget(b))
    uda = get_attack("unlearndiffatk")
    off = uda.budget("official")
    # the official code: 40 iterations at each of 50 timesteps t = 10, 30, ..., 990; k = 3, or 5 for nudity
    assert (off.timesteps, off.iterations, off.tokens, off.lr, off.weight_decay) == (50, 40, 3, 0.01, 0.1)
    assert uda.budget("official", "unsafe").tokens == 5
    assert uda.timesteps(50, 1000) == list(range(10, 1000, 20))
    assert get_attack("ringabell").needs_target_in_prompt and get_attack("noiseprobe").access == "black-box"


def test_search_mechanics():
    from igmu.attacks.search import STESample, banned_for, every_k_layout, project_simplex
    from igmu.models.tokenizer import load_world_tokenizer

    # projection onto the simplex: nonnegative rows summing to 1, the identity on points already there, and the
    # closest such point (checked against random points of the simplex)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 40, generator=g) * 3
    p = project_simplex(x)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    assert torch.allclose(project_simplex(p), p, atol=1e-6)
    others = torch.distributions.Dirichlet(torch.ones(40)).sample((2000,))
    for i in range(5):
        assert (x[i] - p[i]).norm() <= (x[i] - others).norm(dim=1).min() + 1e-5
    allowed = torch.arange(40) % 2 == 0
    assert (project_simplex(x, allowed)[:, ~allowed] == 0).all()
    # straight-through sampling: one-hot forward, gradient passed through and clipped to [-1, 1]
    probs = torch.softmax(torch.randn(3, 10, generator=g), -1).requires_grad_(True)
    oh = STESample.apply(probs, g)
    assert torch.equal(oh.sum(1), torch.ones(3))
    (oh * torch.linspace(-3, 3, 10)).sum().backward()
    assert torch.allclose(probs.grad, torch.linspace(-3, 3, 10).clamp(-1, 1).expand(3, -1))
    # MMA's filter: the target word and the pieces that spell it are banned, its synonym is not
    tok = load_world_tokenizer()
    banned = {tok.convert_ids_to_tokens(i) for i in banned_for(tok, ["striped"])}
    assert {"striped</w>", "strip", "str"} <= banned and "stripy</w>" not in banned
    # P4D-K: one adversarial token before every 3 prompt tokens
    ids, adv, fixed = every_k_layout(tok, PROMPT, 3, [7, 8, 9])
    body = tok(PROMPT, add_special_tokens=False).input_ids
    assert adv == [1, 5, 9] and ids[0, fixed].tolist() == body and ids[0, adv].tolist() == [7, 8, 9]
    assert contains_target("A red Striped circle", "striped") and not contains_target("a stripy circle", "striped")
    assert strip_target("a red striped circle", "striped") == "a red circle"


def test_pooled_text_embedding_reads_only_up_to_the_end_token(uce_pair):
    """MMA's pooled embeddings encode only the tokens up to the end token (CLIP is causal and pools that token):
    the same embedding as the padded call, up to kernel rounding, with and without replaced slots; batched
    decoding gives each row's decode()."""
    from igmu.attacks.search import decode, decode_rows, pooled_with, prefix_layout, through_end
    from igmu.diffusion.arch import adapter_for
    from igmu.diffusion.prompt_attack import with_slots

    for kind in ("sd1", "sd2"):
        a = adapter_for(uce_pair[kind][1])
        tok, te = a.tokenizer, a.text_encoder
        ids = torch.cat([a.tokenize([PROMPT]), a.tokenize(["a star"])])
        cut = through_end(te, tok, ids)
        assert cut.shape[1] == len(tok(PROMPT).input_ids) < ids.shape[1]
        assert torch.equal(cut, ids[:, :cut.shape[1]])
        with torch.no_grad():
            full = te(ids).pooler_output
            assert torch.allclose(pooled_with(a, ids), full, atol=1e-5)
            for fill in ([tok.eos_token_id] * 2, tok(" red star", add_special_tokens=False).input_ids[:2]):
                slot_ids, pos = prefix_layout(tok, PROMPT, 2, fill)  # CLIP pools the first end token, a slot
                vec = torch.randn(2, a.token_embeddings().weight.shape[1],  # in the first layout
                                  generator=torch.Generator().manual_seed(0))
                with with_slots(a.token_embeddings(), pos, vec):
                    ref = te(slot_ids).pooler_output
                assert torch.allclose(pooled_with(a, slot_ids, pos, vec), ref, atol=1e-5)
        assert decode_rows(tok, ids) == [decode(tok, r) for r in ids] == [PROMPT, "a star"]
    assert torch.equal(through_end(torch.nn.Identity(), tok, ids), ids)  # not a CLIP text encoder: unchanged


def test_calls_an_attack_cannot_serve_fail_in_one_line(uce_pair, plain_unet_model):
    from igmu.artifacts import load_model

    un, orig, _ = uce_pair["sd1"]
    with pytest.raises(UserError, match="needs the original model"):
        run_attack("p4d-n", un, None, "circle", [PROMPT], [0], "tiny", never, FAST)
    with pytest.raises(UserError, match="does not contain the target"):
        run_attack("ringabell", un, orig, "circle", ["a red square"], [0], "tiny", never, FAST)
    with pytest.raises(UserError, match="unknown budget 'huge'"):
        run_attack("cce", un, orig, "circle", [PROMPT], [0], "huge", never, FAST)
    with pytest.raises(UserError, match="unknown attack"):
        run_attack("nope", un, orig, "circle", [PROMPT], [0], "tiny", never, FAST)
    from igmu.models.tiny import make_tiny_pipeline

    xl = make_tiny_pipeline("sdxl")
    with pytest.raises(UserError, match="has not been ported to SDXL yet"):
        run_attack("ringabell", xl, xl, "circle", [PROMPT], [0], "tiny", never, FAST)
    plain = load_model(str(plain_unet_model))
    for name in ("unlearndiffatk", "p4d-k", "cce"):
        with pytest.raises(UserError, match="no cross-attention"):
            run_attack(name, plain, orig, "circle", [PROMPT], [0], "tiny", never, FAST)


def test_attack_command(tmp_path):
    from igmu.erase import run_erase

    art = run_erase("mini", "uce", ["circle"], None, [], None, [], tmp_path / "uce")  # the mini judge sees mini images
    out = tmp_path / "atk"
    r = cli("attack", "--attack", "cce", "--unlearned", str(art), "--original", "mini", "--prompt", PROMPT,
            "--prompt", "a blue circle", "--target", "circle", "--budget", "tiny", "--steps", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "igmu-attack" and doc["budget"]["name"] == "tiny" and doc["asr"]["n"] == 2
    assert doc["asr"]["lo"] <= doc["asr"]["value"] <= doc["asr"]["hi"]
    for rec in doc["records"]:
        assert (out / rec["image"]).is_file()
        assert rec["success_no_attack"] or rec["embedding"] == "embeddings/cce-0.safetensors"
    if not all(rec["success_no_attack"] for rec in doc["records"]):
        from safetensors.torch import load_file

        assert set(load_file(str(out / "embeddings" / "cce-0.safetensors"))) == {"<cce>"}
    one_line_error(cli("attack", "--attack", "p4d-n", "--unlearned", str(art), "--prompt", PROMPT, "--target", "circle",
                       "--budget", "tiny", "--out", str(tmp_path / "x")), "needs the original model")
    assert not (tmp_path / "x").exists()
    from typer.testing import CliRunner

    from igmu.cli import app

    r = CliRunner().invoke(app, ["attacks"])
    assert r.exit_code == 0 and "unlearndiffatk" in r.output and "text encoder only" in r.output
    r = CliRunner().invoke(app, ["attacks", "--budgets"])
    assert r.exit_code == 0 and '"timesteps": 50, "iterations": 40' in r.output


def test_attack_lists_in_tasks_and_configs():
    from igmu.attacks.base import parse_attack_specs
    from igmu.tasks import load_task, task_from_dict

    assert parse_attack_specs("unlearndiffatk:official, ringabell") == [("unlearndiffatk", "official"),
                                                                      ("ringabell", "fast")]
    for bad, needle in (("unlearndiffatk:huge", "unknown budget"), ("nope:fast", "unknown attack"),
                        ("mma:tiny,mma:tiny", "listed twice")):
        with pytest.raises(UserError, match=needle):
            parse_attack_specs(bad)
    t = load_task("mini:object-circle").model_dump(mode="json")
    with pytest.raises(UserError, match="attack.tokens is no longer a setting"):
        task_from_dict({**t, "attack": {"prompts": 2, "tokens": 5}})
    assert task_from_dict({**t, "attack": {"prompts": 2, "attacks": ["p4d-k:tiny"]}}).attack.attacks == ["p4d-k:tiny"]
