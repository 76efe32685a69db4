"""FMN (attention re-steering) and ConceptPrune (skilled-neuron pruning) on tiny SD1/SD2-style pipelines."""
import pytest
import torch

from igmu.errors import UserError
from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.attention import record_cross_attention
from igmu.methods.conceptprune import ffn_layers, skilled_mask
from igmu.methods.fmn import concept_positions


FMN_FAST = ["iterations=4", "n_images=2", "sample_steps=3", "lr=1e-3"]
CP_FAST = ["samples=3", "sample_steps=4", "timesteps=3", "skill_ratio=0.1"]


def _base(kind, tiny_sd1, tiny_sd2):
    return str(tiny_sd1 if kind == "sd1" else tiny_sd2)


def _attention_mass(pipe, prompt, concept):
    """Mean attention probability on the concept's tokens (and the pooler token), over layers, heads, pixels."""
    mask = concept_positions(pipe, prompt, concept, True)
    cond = adapter_for(pipe).encode([prompt])[0].expand(4, -1, -1)
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    vals = []
    with torch.no_grad(), record_cross_attention(pipe, lambda n, p: vals.append(p[..., mask].sum(-1).mean())):
        for t in (100, 500, 900):
            pipe.unet(x, t, encoder_hidden_states=cond)
    return float(torch.stack(vals).mean())


def _ffn_outputs(pipe, prompt):
    """Outputs of every ff.net.2 for one prompt at a few timesteps (a fixed latent)."""
    outs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outs.setdefault(n, []).append(o.detach()))
             for n, m in ffn_layers(pipe.unet)]
    size = pipe.unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for t in (900, 700, 500):
            pipe.unet(x, t, encoder_hidden_states=adapter_for(pipe).encode([prompt])[0].expand(2, -1, -1))
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in outs.items()}


def _ffn_change(orig, edited, prompt):
    a, b = _ffn_outputs(orig, prompt), _ffn_outputs(edited, prompt)
    return float(sum((b[n] - a[n]).norm() for n in a) / sum(a[n].norm() for n in a))


# ---------------------------------------------------------------- FMN

@pytest.mark.parametrize("kind,method", [("sd1", "full"), ("sd2", "xattn")])
def test_fmn_lowers_attention_on_target_tokens_and_changes_only_its_layers(kind, method, tiny_sd1, tiny_sd2,
                                                                           tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    sets = FMN_FAST + [f"train_method={method}"] + (["lr=1e-2"] if method == "xattn" else [])
    art = run_erase(base, "fmn", ["circle"], None, [], None, sets, tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert manifest["method"] == "fmn" and manifest["config"]["train_method"] == method
    assert manifest["cost"]["params_changed"] > 0
    assert all(k.startswith("unet.") for k in tensors)
    if method == "xattn":
        assert all(".attn2." in k for k in tensors)
    else:  # nothing downstream of the last cross-attention can be reached by the attention loss
        assert any(".attn2.to_q." in k for k in tensors) and any("resnets" in k for k in tensors)
        assert not any(k.startswith(("unet.conv_out.", "unet.conv_norm_out.")) for k in tensors)
    orig, edited = load_model(base), load_model(str(art))
    before, after = _attention_mass(orig, "circle", "circle"), _attention_mass(edited, "circle", "circle")
    assert after < 0.7 * before, (before, after)


def test_fmn_several_targets_and_deterministic(tiny_sd1, tmp_path):
    sets = FMN_FAST + ["iterations=2", "template=a photo of {}"]
    a = run_erase(str(tiny_sd1), "fmn", ["circle", "star"], None, [], None, sets, tmp_path / "a")
    b = run_erase(str(tiny_sd1), "fmn", ["circle", "star"], None, [], None, sets, tmp_path / "b")
    (ma, ta), (_, tb) = load_artifact(a), load_artifact(b)
    assert ma["targets"] == ["circle", "star"] and ma["config"]["template"] == "a photo of {}"
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_fmn_concept_positions(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    tok = pipe.tokenizer
    ids = tok("a photo of hex mark", padding="max_length", max_length=tok.model_max_length).input_ids
    m = concept_positions(pipe, "a photo of hex mark", "hex mark", use_pooler=True)
    assert m.nonzero().ravel().tolist() == [4, 5, 6] and ids[6] == tok.eos_token_id  # the word tokens, first EOS
    assert concept_positions(pipe, "a photo of hex mark", "hex mark", use_pooler=False).sum() == 2


def test_fmn_bad_options(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    for bad in (["template=a photo"], ["template='{} and {}'"], ["iterations=0"], ["lr=0"], ["train_method=kv"]):
        with pytest.raises(UserError, match="bad value for fmn option"):
            run_erase(base, "fmn", ["circle"], None, [], None, bad, tmp_path / "a")
    with pytest.raises(UserError, match="has no option 'skill_ratio'"):
        run_erase(base, "fmn", ["circle"], None, [], None, ["skill_ratio=0.1"], tmp_path / "a")
    with pytest.raises(UserError, match="empty target"):
        run_erase(base, "fmn", ["circle", " "], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- ConceptPrune

@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_conceptprune_zeroes_only_skilled_ffn_weights_and_hits_the_target(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "conceptprune", ["circle"], None, [], None, CP_FAST, tmp_path / "a")
    manifest, tensors = load_artifact(art)
    assert manifest["method"] == "conceptprune" and manifest["cost"]["params_changed"] > 0
    assert tensors and all(k.endswith(".ff.net.2.weight") for k in tensors)
    orig, edited = load_model(base), load_model(str(art))
    W0 = dict(orig.unet.named_parameters())
    pruned = 0
    for k, w in tensors.items():
        w0 = W0[k.split(".", 1)[1]].detach()
        moved = w != w0
        assert torch.all(w[moved] == 0)  # pruning only sets weights to zero
        pruned += int(moved.sum())
        assert int(moved.sum()) < 0.5 * w.numel()
    assert pruned == manifest["cost"]["params_changed"]
    # the pruned weights carry the target more than the reference: the target's FFN outputs move more than
    # those of the (empty) reference prompt. In random tiny models the prompt barely shapes FFN activations,
    # so the margin is small (a few percent) but deterministic.
    assert _ffn_change(orig, edited, "circle") > _ffn_change(orig, edited, "")


def test_conceptprune_skilled_mask_is_rowwise_topk_that_beats_the_reference():
    W = torch.tensor([[1.0, -4.0, 2.0, 3.0],
                      [0.5, 0.1, -3.0, 1.0]])
    tgt = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    ref = torch.tensor([0.5, 2.0, 0.5, 0.5], dtype=torch.float64)  # column 1 is stronger for the reference
    m = skilled_mask(W, tgt, ref, ratio=0.5)  # k = 2 per row
    # row 0: top-2 target scores are columns 1 (4) and 3 (3); column 1 loses to the reference (8 > 4)
    # row 1: top-2 are columns 2 (3) and 3 (1); both beat the reference
    assert m.tolist() == [[False, False, False, True], [False, False, True, True]]
    # k is at least one per row; a row whose top weight loses to the reference prunes nothing (no fallback)
    assert skilled_mask(W, tgt, ref, ratio=0.01).tolist() == [[False] * 4, [False, False, True, False]]


def test_conceptprune_several_targets_prune_the_union(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    one = load_artifact(run_erase(base, "conceptprune", ["circle"], "square", [], None, CP_FAST, tmp_path / "a"))[1]
    two = load_artifact(run_erase(base, "conceptprune", ["circle", "star"], "square", [], None, CP_FAST,
                                  tmp_path / "b"))[1]
    again = load_artifact(run_erase(base, "conceptprune", ["circle"], "square", [], None, CP_FAST, tmp_path / "c"))[1]
    assert one.keys() == again.keys() and all(torch.equal(one[k], again[k]) for k in one)  # deterministic
    assert set(one) <= set(two)
    for k in one:
        assert torch.all(two[k][one[k] == 0] == 0)  # circle's pruned weights stay pruned with two targets
    assert sum(int((v == 0).sum()) for v in two.values()) > sum(int((v == 0).sum()) for v in one.values())


def test_conceptprune_contexts(tiny_sd1, tmp_path):
    sets = CP_FAST + ["contexts=['a {} on a dark background', 'a red {}']"]
    manifest, tensors = load_artifact(run_erase(str(tiny_sd1), "conceptprune", ["circle"], None, [], None, sets,
                                                tmp_path / "a"))
    assert manifest["config"]["contexts"] == ["a {} on a dark background", "a red {}"] and tensors


def test_conceptprune_bad_options(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    for bad in (["skill_ratio=0"], ["skill_ratio=1.5"], ["timesteps=0"], ["select_ratio=1"], ["contexts=[]"]):
        with pytest.raises(UserError, match="bad value for conceptprune option"):
            run_erase(base, "conceptprune", ["circle"], None, [], None, bad, tmp_path / "a")
    with pytest.raises(UserError, match="cannot exceed sample_steps"):
        run_erase(base, "conceptprune", ["circle"], None, [], None, ["timesteps=20", "sample_steps=10"], tmp_path / "a")
    with pytest.raises(UserError, match="has no {} where the target goes"):
        run_erase(base, "conceptprune", ["circle"], None, [], None, ["contexts=['a photo']"], tmp_path / "a")
    with pytest.raises(UserError, match="at most"):
        run_erase(base, "conceptprune", ["circle " * 40], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()
