import pytest
import torch

from igmu.errors import UserError
from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.attention import record_cross_attention
from igmu.methods.mace import MACE, _shared_positions


FAST = ["lora_steps=2", "sample_steps=3", "n_images=2"]  # tiny step counts: the code path, not the published run


def _kv(orig, edited):
    """(name, projection, original module, edited module) for every cross-attention to_k / to_v."""
    for (name, a0), (_, a1) in zip(adapter_for(orig).cross_attentions(), adapter_for(edited).cross_attentions()):
        for proj in ("to_k", "to_v"):
            yield name, proj, getattr(a0, proj), getattr(a1, proj)


def test_shared_positions_align_common_words_and_padding():
    # BOS a photo of circle EOS  vs  BOS a photo of square EOS: all but the target word, then the padding
    same = [0, 1, 2, 3, 5, 6, 7]
    assert _shared_positions([1, 5, 6, 7, 9, 2], [1, 5, 6, 7, 8, 2], 8) == (same, same)
    # anchor "" drops the word: the target prompt's EOS and padding meet the anchor's one position earlier
    assert _shared_positions([1, 5, 6, 9, 2], [1, 5, 6, 2], 8) == ([0, 1, 2, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_mace_changes_only_cross_attention_kv_and_maps_target_onto_anchor(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = str(tiny_sd1 if kind == "sd1" else tiny_sd2)
    ticks = []

    def factory(total):
        ticks.append(total)
        return lambda k=1, **info: ticks.append(k)

    sets = FAST + ["lamb=0.01", "preserve_scale=0.3"]
    art = run_erase(base, "mace", ["circle"], "square", ["star"], None, sets, tmp_path / "a", progress_factory=factory)
    assert sum(ticks[1:]) == ticks[0]  # the progress bar ends full
    manifest, tensors = load_artifact(art)
    assert manifest["method"] == "mace" and manifest["cost"]["params_changed"] > 0
    orig, edited = load_model(base), load_model(str(art))
    assert set(tensors) == {f"unet.{n}.{p}.weight" for n, _ in adapter_for(orig).cross_attentions() for p in ("to_k", "to_v")}

    hs, mask = adapter_for(orig).encode(["a photo of circle", "a photo of square", "a photo of star"])
    after = int(mask[0].sum()) - 1  # EOS and padding: what follows the target word ("circle", "square": 1 token)
    tgt, anc, keep = hs[0, after:], hs[1, after:], hs[2]
    for name, proj, p0, p1 in _kv(orig, edited):
        before_gap, after_gap = (p0(tgt) - p0(anc)).norm(), (p1(tgt) - p0(anc)).norm()
        assert after_gap < 0.7 * before_gap, (name, proj)  # the residue of the target now looks like the anchor's
        assert (p1(keep) - p0(keep)).norm() < 0.1 * p0(keep).norm(), (name, proj)  # the preserved concept stays


def test_mace_two_targets_preservation_and_determinism(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    sets = FAST + ["lamb=0.01"]
    a = run_erase(base, "mace", ["circle", "star"], None, ["square"], None, sets + ["preserve_scale=1"], tmp_path / "a")
    b = run_erase(base, "mace", ["circle", "star"], None, ["square"], None, sets + ["preserve_scale=1"], tmp_path / "b")
    c = run_erase(base, "mace", ["circle", "star"], None, [], None, sets, tmp_path / "c")
    ta, tb = load_artifact(a)[1], load_artifact(b)[1]
    assert load_artifact(a)[0]["targets"] == ["circle", "star"]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # seeded: same result

    orig = load_model(base)
    hs, mask = adapter_for(orig).encode(["a photo of circle", "a photo of star", "a photo of", "a photo of square"])
    n_t, n_a, L = int(mask[0].sum()), int(mask[2].sum()), hs.shape[1]
    anc = hs[2, n_a - 1:L - 1]  # no anchor: the template without the target, aligned after the dropped word
    drift = {}
    for art in (a, c):
        for name, proj, p0, p1 in _kv(orig, load_model(str(art))):
            for i in (0, 1):  # both targets at once
                tgt = hs[i, n_t - 1:]
                assert (p1(tgt) - p0(anc)).norm() < 0.9 * (p0(tgt) - p0(anc)).norm(), (art.name, name, proj, i)
            drift[art.name, name, proj] = ((p1(hs[3]) - p0(hs[3])).norm() / p0(hs[3]).norm()).item()
    for (run, name, proj), d in drift.items():
        if run == "a":
            assert d < drift["c", name, proj]  # --preserve keeps the preserved concept closer to where it was


def test_mace_lora_suppresses_the_targets_attention(tiny_sd2, tmp_path):
    base = str(tiny_sd2)
    sets = ["lora_steps=10", "sample_steps=3", "n_images=2", "use_mask=false"]
    weak = run_erase(base, "mace", ["circle"], None, [], None, sets + ["lr=1e-12"], tmp_path / "weak")
    strong = run_erase(base, "mace", ["circle"], None, [], None, sets + ["lr=5e-2"], tmp_path / "strong")
    orig = load_model(base)
    emb = adapter_for(orig).encode(["a photo of circle"])[0].expand(4, -1, -1)
    (_, sel), = MACE._target_positions(adapter_for(orig), ["a photo of circle"], "circle", True)
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def attention_on_target(art):
        pipe, mass = load_model(str(art)), []
        unet = pipe.unet
        with torch.no_grad(), record_cross_attention(pipe, lambda n, p: mass.append(p[..., sel].sum(-1).mean())):
            unet(x, torch.tensor([300]), encoder_hidden_states=emb)
        return torch.stack(mass).mean().item()

    assert attention_on_target(strong) < 0.9 * attention_on_target(weak)


def test_mace_bad_inputs(tiny_sd1, tmp_path):
    base, out = str(tiny_sd1), tmp_path / "a"
    with pytest.raises(UserError, match="has no option 'steps'"):
        run_erase(base, "mace", ["circle"], None, [], None, ["steps=3"], out)
    for bad in ["rank=0", "lora_steps=0", "mask_threshold=1", "concept_type=color", "n_prompts=31", "lr=0",
                "lamb=-1"]:
        with pytest.raises(UserError, match="bad value for mace option"):
            run_erase(base, "mace", ["circle"], None, [], None, [bad], out)
    with pytest.raises(UserError, match="empty target"):
        run_erase(base, "mace", ["circle", " "], None, [], None, FAST, out)
    with pytest.raises(UserError, match="anchor .* at most"):
        run_erase(base, "mace", ["circle"], "square " * 40, [], None, FAST, out)
    with pytest.raises(UserError, match="preserved concept .* at most"):
        run_erase(base, "mace", ["circle"], None, ["star " * 40], None, FAST, out)
    with pytest.raises(UserError, match="too long for MACE's prompts"):
        run_erase(base, "mace", ["circle " * 29], None, [], None, FAST, out)  # fits alone, not in any template
    assert not out.exists()
