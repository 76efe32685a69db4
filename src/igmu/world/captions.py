"""Captions for mini-world scenes: templates, synonyms, translations, implicit phrasings.

`caption(scene, rng)` draws one caption at random (used for training, so every
image is seen under many phrasings); `canonical(scene)` is the one fixed English
caption naming everything in the scene (used for evaluation prompts).
"""
from __future__ import annotations

import numpy as np

from .render import Obj, Scene
from .vocab import EN, IMPLICIT_MARK, LANGUAGES, TR

P_TRANSLATE = 0.2


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(o: Obj, rng=None, p_color=1.0, p_style=1.0, p_plain=0.0) -> str:
    """English noun phrase without article, e.g. 'red striped circle'."""
    syn = (lambda xs: xs[0]) if rng is None else (lambda xs: _pick(rng, xs))
    rnd = (lambda: 0.0) if rng is None else rng.random
    words = []
    if rnd() < p_color:
        words.append(syn(EN["color"][o.color]))
    if o.style != "plain" and rnd() < p_style:
        words.append(syn(EN["style"][o.style]))
    elif o.style == "plain" and rnd() < p_plain:
        words.append(syn(EN["style"]["plain"]))
    words.append(syn(EN["shape"][o.shape]))
    return " ".join(words)


def with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _bg_en(scene, rng, canonical=False):
    word = EN["background"][scene.background][0] if canonical else _pick(rng, EN["background"][scene.background])
    if canonical or rng.random() < 0.7:
        return f" on a {word} background"
    return f" against a {word} backdrop"


def canonical(scene: Scene) -> str:
    """The fixed, complete English caption of a scene."""
    bg = _bg_en(scene, None, canonical=True)
    if scene.kind == "object":
        return with_article(describe(scene.objects[0])) + bg
    if scene.kind == "pair":  # objects in a fixed order, so equal scenes get equal captions
        a, b = (with_article(describe(o)) for o in sorted(scene.objects, key=lambda o: o.shape))
        return f"{a} and {b}{bg}"
    if scene.kind == "identity":
        return EN["identity"][scene.identity][0] + bg
    if scene.kind == "carrier":
        return ("a person with a hex mark" if scene.mark else "a person") + bg
    raise ValueError(scene.kind)


def _english(scene: Scene, rng) -> str:
    bg = _bg_en(scene, rng) if rng.random() < 0.75 else ""
    if scene.kind == "object":
        o = scene.objects[0]
        phrase = with_article(describe(o, rng, p_color=0.9, p_style=0.9, p_plain=0.2))
        lead = _pick(rng, ["", "", "", "a picture of ", "an image of ", "a drawing of "])
        return lead + phrase + bg
    if scene.kind == "pair":
        objs = list(scene.objects)
        if rng.random() < 0.5:
            objs.reverse()
        a, b = (with_article(describe(o, rng, p_color=0.9, p_style=0.9)) for o in objs)
        return f"{a} and {b}{bg}"
    if scene.kind == "identity":
        name = _pick(rng, EN["identity"][scene.identity])
        lead = _pick(rng, ["", "", "a portrait of ", "a picture of "])
        return lead + name + bg
    if scene.kind == "carrier":
        person = _pick(rng, EN["person"])
        if scene.mark:
            if rng.random() < 0.3:
                return _pick(rng, IMPLICIT_MARK) + bg
            return f"a {person} with a {_pick(rng, EN['mark'])}" + bg
        return f"a {person}" + bg
    raise ValueError(scene.kind)


def translate(scene: Scene, lang: str, rng=None) -> str:
    """A caption of the scene in another language (canonical when rng is None)."""
    t = TR[lang]
    implicit = rng is not None and scene.mark and rng.random() < 0.3

    def obj(o: Obj) -> str:
        noun, color = t["shape"][o.shape], t["color"][o.color]
        style = t["style"][o.style] if o.style != "plain" else ""
        if lang == "de":
            return " ".join(w for w in [t["a"], color, style, noun] if w)
        return " ".join(w for w in [t["a"], noun, color, style] if w)

    if scene.kind == "object":
        body = obj(scene.objects[0])
    elif scene.kind == "pair":
        body = f"{obj(scene.objects[0])} {t['and']} {obj(scene.objects[1])}"
    elif scene.kind == "identity":
        body = EN["identity"][scene.identity][0]
    else:
        if implicit:
            body = _pick(rng, t["implicit"])
        else:
            body = f"{t['a']} {t['person']}" + (f" {t['mark']}" if scene.mark else "")
    bg = t["background"][scene.background]
    if lang == "de":
        return f"{body} {t['on']} {bg} {t['bg_word']}"
    return f"{body} {t['on']} {bg}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random caption: English with synonyms and omissions, or a translation."""
    if rng.random() < P_TRANSLATE:
        return translate(scene, _pick(rng, LANGUAGES), rng)
    return _english(scene, rng)


def corpus(rng: np.random.Generator, n: int) -> list[str]:
    """Captions covering the vocabulary, for building the tokenizer."""
    from .scenes import sample_scene
    out = []
    for _ in range(n):
        s = sample_scene(rng)
        out += [caption(s, rng), canonical(s)] + [translate(s, lang) for lang in LANGUAGES]
    return out
