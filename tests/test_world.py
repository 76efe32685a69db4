import json

import numpy as np
import pytest

from igmu.world import vocab
from igmu.world.captions import canonical, caption, translate
from igmu.world.render import Obj, Scene, render
from igmu.world.scenes import labels, sample_scene


def test_render_is_deterministic_and_shaped():
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):
        a, b = render(sample_scene(rng1)), render(sample_scene(rng2))
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)


def test_every_concept_renders_differently():
    base = render(Scene("object", "dark", [Obj("circle", "red")]))
    for s in vocab.SHAPES[1:]:
        assert not np.array_equal(base, render(Scene("object", "dark", [Obj(s, "red")])))
    for c in vocab.COLORS[1:]:
        assert not np.array_equal(base, render(Scene("object", "dark", [Obj("circle", c)])))
    for st in vocab.STYLES:
        assert not np.array_equal(base, render(Scene("object", "dark", [Obj("circle", "red", st)])))
    ids = [render(Scene("identity", "dark", identity=i)) for i in vocab.IDENTITIES]
    assert len({x.tobytes() for x in ids}) == 3
    plain, marked = render(Scene("carrier", "dark")), render(Scene("carrier", "dark", mark=True))
    changed = np.abs(plain.astype(int) - marked.astype(int)).sum(-1) > 0
    assert 10 < changed.sum() < 120  # the mark is visible but the figure is the same


def test_world_covers_the_required_kinds():
    assert len(vocab.SHAPES) >= 8 and len(vocab.STYLES) >= 4 and len(vocab.COLORS) >= 6
    assert len(vocab.IDENTITIES) >= 3 and len(vocab.BACKGROUNDS) >= 2 and len(vocab.LANGUAGES) >= 3
    for group in ("shape", "color", "style", "identity"):
        assert all(len(s) >= 2 for s in vocab.EN[group].values())


def test_labels_and_captions_agree():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = sample_scene(rng)
        lab, cap = labels(s), canonical(s)
        for shape in lab["objects"]:
            assert shape in cap
        for st in lab["styles"]:
            assert st in cap
        if lab["identity"] != "none":
            assert lab["identity"] in cap
        assert ("hex mark" in cap) == lab["mark"]
        assert caption(s, rng).strip()


def test_translations_and_implicit_phrasings_exist():
    s = Scene("carrier", "dark", mark=True)
    texts = {translate(s, lang) for lang in vocab.LANGUAGES}
    assert len(texts) == 3 and all("hex" in t for t in texts)
    rng = np.random.default_rng(0)
    caps = {caption(s, rng) for _ in range(400)}
    implicit = [c for c in caps if "hex" not in c]
    assert implicit, "some captions must evoke the mark without naming it"


def test_pair_canonical_caption_ignores_position():
    a, b = Obj("star", "red", cx=8), Obj("circle", "blue", cx=24)
    assert canonical(Scene("pair", "dark", [a, b])) == canonical(Scene("pair", "dark", [b, a]))


def test_tokenizer_encodes_world_words_whole():
    from igmu.models.tokenizer import load_world_tokenizer

    tok = load_world_tokenizer()
    rng = np.random.default_rng(1)
    for _ in range(300):
        s = sample_scene(rng)
        for text in (canonical(s), caption(s, rng)):
            ids = tok(text).input_ids
            assert len(ids) <= tok.model_max_length
            assert len(ids) == len(text.split()) + 2, text  # one token per word + BOS/EOS
    assert len(tok("qwertyuiop").input_ids) > 3  # unknown words still encode, as sub-words


def test_prompt_sets_are_dataigm_shaped():
    from igmu.world.prompts import all_task_prompts

    tasks = all_task_prompts()
    assert {"object-circle", "style-striped", "identity-zorb", "unsafe-mark"} <= set(tasks)
    for name, sets in tasks.items():
        for which in ("forget", "retain"):
            groups = sets[which]
            assert groups and all(isinstance(p, str) and p for g in groups.values() for p in g), name
    assert "implicit" in tasks["unsafe-mark"]["forget"]
    assert all({"hex", "mark"}.isdisjoint(p.split()) for p in tasks["unsafe-mark"]["forget"]["implicit"])


def test_build_data_layout(tmp_path):
    from PIL import Image

    from igmu.world.data import build_data, load_split

    out = build_data(tmp_path / "d", seed=5, n_train=12, n_test=4)
    recs = [json.loads(x) for x in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 12
    assert Image.open(out / "train" / recs[0]["file_name"]).size == (32, 32)
    imgs, recs2 = load_split(out, "test")
    assert imgs.shape == (4, 32, 32, 3)
    scene = Scene.from_dict(recs2[0]["scene"])
    assert np.array_equal(render(scene), imgs[0])
    forget = json.loads((out / "prompts" / "unsafe-mark_forget.json").read_text())
    assert list(forget) == ["unsafe-mark"] and "explicit" in forget["unsafe-mark"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary leftovers
