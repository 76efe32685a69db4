import json

import pytest
import torch

from igmu.errors import UserError
from igmu.artifacts import export_merged, load_artifact, load_model
from igmu.erase import run_erase
from igmu.diffusion.arch import adapter_for


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_uce_maps_target_onto_anchor_and_keeps_preserved(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = str(tiny_sd1 if kind == "sd1" else tiny_sd2)
    art = run_erase(base, "uce", ["circle"], "square", ["star"], None, ["lamb=0.01"], tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert manifest["method"] == "uce" and manifest["targets"] == ["circle"]
    assert manifest["cost"]["params_changed"] > 0 and manifest["base_model_hash"]
    assert all(".attn2.to_" in k for k in tensors)

    orig, edited = load_model(base), load_model(str(art))
    hs, mask = adapter_for(orig).encode(["circle", "square", "star"])
    last = int(mask[0].sum()) - 2  # the word token; "circle" and "square" are one token each here
    (name, a0), = [x for x in adapter_for(orig).cross_attentions()][:1]
    a1 = dict(adapter_for(edited).cross_attentions())[name]
    tgt, anc, keep = hs[0, last], hs[1, last], hs[2]
    before = (a0.to_v(tgt) - a0.to_v(anc)).norm()
    after = (a1.to_v(tgt) - a0.to_v(anc)).norm()
    assert after < 0.2 * before  # the target's value now looks like the anchor's
    drift = (a1.to_v(keep) - a0.to_v(keep)).norm() / a0.to_v(keep).norm()
    assert drift < 0.2  # the preserved concept barely moves


def test_uce_several_targets_and_export(tiny_sd1, tmp_path):
    from diffusers import StableDiffusionPipeline

    art = run_erase(str(tiny_sd1), "uce", ["circle", "star"], None, [], None, [], tmp_path / "a")
    out = export_merged(art, tmp_path / "merged")
    merged = StableDiffusionPipeline.from_pretrained(str(out))
    _, tensors = load_artifact(art)
    k = next(iter(tensors))
    assert torch.equal(dict(merged.unet.named_parameters())[k.split(".", 1)[1]].detach(), tensors[k])
    assert json.loads((out / "igmu_artifact_manifest.json").read_text())["targets"] == ["circle", "star"]


def test_erase_bad_inputs(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    with pytest.raises(UserError, match="unknown method 'nope'; available: .*uce"):
        run_erase(base, "nope", ["circle"], None, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="has no option 'lr'"):
        run_erase(base, "uce", ["circle"], None, [], None, ["lr=1"], tmp_path / "a")
    with pytest.raises(UserError, match="bad value"):
        run_erase(base, "uce", ["circle"], None, [], None, ["lamb=-1"], tmp_path / "a")
    with pytest.raises(UserError, match="no --target"):
        run_erase(base, "uce", [], None, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="empty target"):
        run_erase(base, "uce", [""], None, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="at most"):
        run_erase(base, "uce", ["circle " * 40], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_esd_is_deterministic(tiny_sd1, tmp_path):
    sets = ["iterations=2", "sample_steps=3"]
    a = load_artifact(run_erase(str(tiny_sd1), "esd", ["star"], None, [], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(str(tiny_sd1), "esd", ["star"], None, [], None, sets, tmp_path / "b"))[1]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_concept_method_refuses_two_targets(tiny_sd1, tmp_path):
    with pytest.raises(UserError, match="one concept at a time"):
        run_erase(str(tiny_sd1), "esd", ["circle", "star"], None, [], None, [], tmp_path / "a")


@pytest.mark.parametrize("method,why", [
    ("uce", "no cross-attention"), ("esd", "no parameters of kind 'xattn'"), ("fmn", "no cross-attention"),
    ("mace", "no cross-attention"), ("conceptprune", "no transformer feed-forward layers"),
    ("spm", "no transformer blocks"), ("rece", "no cross-attention"), ("advunlearn", "no cross-attention"),
    ("receler", "no cross-attention"), ("ca", "no cross-attention"), ("doco", "no cross-attention"),
    ("speed", "no cross-attention"), ("cure", "no cross-attention"), ("adavd", "no cross-attention"),
    ("gloce", "no cross-attention"), ("sdd", "no parameters of group 'xattn'")])
def test_model_the_method_cannot_edit_is_refused(method, why, plain_unet_model, tmp_path):
    with pytest.raises(UserError, match=why):
        run_erase(str(plain_unet_model), method, ["circle"], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_uce_official_preservation_and_variants(tiny_sd1, tmp_path):
    """The paper's script preserves the empty prompt at max(0.1, 1/len(['']+preserve)); preserve_scale=0 is the
    old behaviour; `--preserve ""` is refused in one line (the empty prompt is always kept); the newer script's
    variant edits with last tokens only."""
    from igmu.methods.uce import UCEConfig, preserve_scale, retain_texts
    from igmu.methods.base import EraseRequest

    cfg = UCEConfig()
    req = EraseRequest(["circle"], None, ["", "star", "star"])
    assert retain_texts(req, cfg) == ["", "star"] and preserve_scale(cfg, 2) == 0.5
    assert preserve_scale(cfg, 1) == 1.0 and preserve_scale(cfg, 20) == 0.1
    new = UCEConfig(token_rows="last")
    assert retain_texts(req, new) == ["", "star"] and preserve_scale(new, 2) == 1.0
    assert retain_texts(EraseRequest(["circle"]), new) == [] and preserve_scale(UCEConfig(preserve_scale=0.3), 5) == 0.3

    base = str(tiny_sd1)
    runs = {name: load_model(str(run_erase(base, "uce", ["circle"], None, pres, None, sets, tmp_path / name)))
            for name, pres, sets in [("official", [], []), ("none", [], ["preserve_scale=0"]),
                                     ("new", [], ["token_rows=last"])]}
    orig = load_model(base)
    null = adapter_for(orig).encode([""])[0][0]
    (name, a0), = adapter_for(orig).cross_attentions()[:1]

    def drift(pipe):  # how far the empty prompt's values moved
        a1 = dict(adapter_for(pipe).cross_attentions())[name]
        return float((a1.to_v(null) - a0.to_v(null)).norm() / a0.to_v(null).norm())
    assert drift(runs["official"]) < 0.5 * drift(runs["none"])  # the empty prompt is kept
    same = lambda p, q: all(torch.equal(x, y) for x, y in zip(p.unet.parameters(), q.unet.parameters()))  # noqa: E731
    with pytest.raises(UserError, match="empty preserved concept"):
        run_erase(base, "uce", ["circle"], None, [""], None, [], tmp_path / "empty")
    assert not same(runs["official"], runs["new"]) and not same(runs["none"], runs["official"])


def test_uce_last_edits_the_last_word_row():
    """On the mini model, token_rows=last (uce_sd_erase.py) maps the concept's last-word row (mask.sum() - 2)
    onto the anchor's through every to_k / to_v, and does not bring the rows after it (EOS, padding) towards the
    anchor's, which token_rows=to_end (train_erase.py) does. Those later rows are where the mini UNet reads
    the concept (scripts/diagnose_token_rows.py, docs/methods.md), hence last's null result there."""
    import copy

    from igmu.methods.base import EraseRequest
    from igmu.methods.uce import UCE, UCEConfig

    orig = load_model("mini")
    a = adapter_for(orig)
    hs, mask = a.encode(["circle", "square"])
    hs = hs.double()
    last = int(mask[0].sum()) - 2
    assert last == 1 and int(mask[1].sum()) - 2 == 1  # one word token each: [start, word, EOS, padding...]

    def gaps(token_rows):
        """Per row, summed over every to_k and to_v: (|W' h_circle - W h_square|, |W h_circle - W h_square|)."""
        pipe = copy.deepcopy(orig)
        UCE().erase(pipe, EraseRequest(["circle"], "square"), UCEConfig(token_rows=token_rows))
        edited = dict(adapter_for(pipe).cross_attentions())
        after = before = 0
        with torch.no_grad():
            for name, a0 in a.cross_attentions():
                for W0, W1 in ((a0.to_k, edited[name].to_k), (a0.to_v, edited[name].to_v)):
                    W0, W1 = W0.weight.double(), W1.weight.double()
                    after = after + (hs[0] @ W1.T - hs[1] @ W0.T).norm(dim=-1)
                    before = before + ((hs[0] - hs[1]) @ W0.T).norm(dim=-1)
        assert before[last:].min() > 0  # the concept's row and every later row differ between the two concepts
        return after, before

    (a_last, b), (a_end, _) = gaps("last"), gaps("to_end")
    # the last-word row: mapped onto the anchor's by last (lamb 0.5 against |k|^2 ~ 119 leaves well under 1%)
    assert a_last[last] / b[last] < 0.01, float(a_last[last] / b[last])
    assert a_last[last] < 0.2 * a_end[last]  # to_end shares the edit with the aligned later rows: less exact here
    # the rows after it (EOS and padding), the rows to_end also edits: to_end brings them towards the anchor's
    # rows, last leaves them as far from them as before, or farther
    later = slice(last + 1, None)
    r_last, r_end = float(a_last[later].sum() / b[later].sum()), float(a_end[later].sum() / b[later].sum())
    assert r_end < 0.5, r_end
    assert r_last > 0.9, r_last
