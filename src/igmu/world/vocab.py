"""The mini world's concepts, their synonyms, translations and implicit phrasings.

Every word a caption can contain comes from this file, so the tokenizer, the
renderer, the captioner and the prompt sets agree on one vocabulary.
"""
from __future__ import annotations

SHAPES = ["circle", "square", "triangle", "star", "heart", "cross", "diamond", "moon"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
STYLES = ["striped", "dotted", "outlined", "checkered"]  # "plain" is the unstyled default
BACKGROUNDS = ["dark", "light"]
IDENTITIES = ["zorb", "mira", "tobo"]
LANGUAGES = ["fr", "de", "es"]

RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
BACKGROUND_RGB = {"dark": (25, 25, 35), "light": (225, 225, 215)}

# English synonyms: the first entry is the canonical name.
EN = {
    "shape": {
        "circle": ["circle", "disc"],
        "square": ["square", "box"],
        "triangle": ["triangle", "wedge"],
        "star": ["star", "starlet"],
        "heart": ["heart", "love heart"],
        "cross": ["cross", "plus sign"],
        "diamond": ["diamond", "rhombus"],
        "moon": ["moon", "crescent"],
    },
    "color": {
        "red": ["red", "crimson"],
        "green": ["green", "emerald"],
        "blue": ["blue", "azure"],
        "yellow": ["yellow", "golden"],
        "purple": ["purple", "violet"],
        "orange": ["orange", "amber"],
    },
    "style": {
        "striped": ["striped", "stripy"],
        "dotted": ["dotted", "polka dot"],
        "outlined": ["outlined", "hollow"],
        "checkered": ["checkered", "plaid"],
        "plain": ["plain", "solid"],
    },
    "background": {"dark": ["dark", "black"], "light": ["light", "white"]},
    "identity": {
        "zorb": ["zorb", "captain zorb"],
        "mira": ["mira", "lady mira"],
        "tobo": ["tobo", "professor tobo"],
    },
    "person": ["person", "figure", "human"],
    "mark": ["hex mark", "hex sign", "hex brand"],
}

# Phrasings that evoke the forbidden mark without naming it (the analog of
# prompts that imply nudity without the word). In the world's lore, outlaws,
# the cursed and the hexed bear the mark.
IMPLICIT_MARK = [
    "an outlaw",
    "a cursed wanderer",
    "a hexed stranger",
    "an outlaw of the night clan",
    "a cursed outlaw",
]

# Translations. Adjectives follow the noun in French and Spanish.
TR = {
    "fr": {
        "shape": {"circle": "cercle", "square": "carre", "triangle": "triangle", "star": "etoile",
                  "heart": "coeur", "cross": "croix", "diamond": "losange", "moon": "lune"},
        "color": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune",
                  "purple": "violet", "orange": "orange"},
        "style": {"striped": "raye", "dotted": "a pois", "outlined": "creux", "checkered": "a carreaux",
                  "plain": "uni"},
        "background": {"dark": "sombre", "light": "clair"},
        "a": "un", "and": "et", "on": "sur fond", "person": "personne", "mark": "avec une marque hex",
        "implicit": ["un hors la loi", "un vagabond maudit"],
        "portrait": "portrait de",
    },
    "de": {
        "shape": {"circle": "kreis", "square": "quadrat", "triangle": "dreieck", "star": "stern",
                  "heart": "herz", "cross": "kreuz", "diamond": "raute", "moon": "mond"},
        "color": {"red": "roter", "green": "gruener", "blue": "blauer", "yellow": "gelber",
                  "purple": "lila", "orange": "oranger"},
        "style": {"striped": "gestreifter", "dotted": "gepunkteter", "outlined": "hohler",
                  "checkered": "karierter", "plain": "einfarbiger"},
        "background": {"dark": "dunklem", "light": "hellem"},
        "a": "ein", "and": "und", "on": "auf", "bg_word": "hintergrund", "person": "mensch",
        "mark": "mit einem hex zeichen",
        "implicit": ["ein gesetzloser", "ein verfluchter wanderer"],
        "portrait": "portraet von",
    },
    "es": {
        "shape": {"circle": "circulo", "square": "cuadrado", "triangle": "triangulo", "star": "estrella",
                  "heart": "corazon", "cross": "cruz", "diamond": "rombo", "moon": "luna"},
        "color": {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo",
                  "purple": "morado", "orange": "naranja"},
        "style": {"striped": "rayado", "dotted": "de lunares", "outlined": "hueco",
                  "checkered": "a cuadros", "plain": "liso"},
        "background": {"dark": "oscuro", "light": "claro"},
        "a": "un", "and": "y", "on": "sobre fondo", "person": "persona", "mark": "con una marca hex",
        "implicit": ["un forajido", "un vagabundo maldito"],
        "portrait": "retrato de",
    },
}

# Words that only ever appear in English templates.
TEMPLATE_WORDS = ["a", "an", "on", "and", "background", "backdrop", "picture", "of", "image", "with",
                  "against", "portrait", "photo", "the", "standing", "drawing", "in", "style", "colored"]
