"""CatIGMU (tasks/catigmu.py) and the planner (tasks/planner.py): kinds, guidance, task files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from igmu.errors import UserError
from igmu.methods import REGISTRY
from igmu.tasks import load_task
from igmu.tasks.catigmu import CARRIER_BOUND, METHODS, leaf_guidance, markdown
from igmu.world.tasks import mini_task
from igmu.tasks.planner import MARKER, infer_kind, plan, plan_text, write_plan
from igmu.tasks.task import KINDS, SCOPES, TRIGGERS

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_task_files", ROOT / "scripts" / "make_task_files.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- kinds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("target,kind", [("circle", "object"), ("disc", "object"), ("striped", "style"),
                                         ("polka dot", "style"), ("zorb", "identity"), ("captain zorb", "identity"),
                                         ("hex mark", "unsafe"), ("hex sign", "unsafe"), ("red", "attribute")])
def test_infer_kind_mini(target, kind):
    assert infer_kind(target, mini=True)[0] == kind
    task, g = plan(target)
    assert task.category.kind == kind and g["category"]["kind"] == kind
    assert any("inferred" in n and "--kind" in n for n in g["notes"])


@pytest.mark.parametrize("target,kind,core", [
    ("nudity", "unsafe", "nudity"), ("naked", "unsafe", "nudity"), ("graphic violence", "unsafe", "graphic violence"),
    ("gore", "unsafe", "gore"), ("in the style of Claude Monet", "style", "Claude Monet"),
    ("Van Gogh style", "style", "Van Gogh"), ("painting by Rembrandt", "style", "Rembrandt"),
    ("art by Greg Rutkowski", "style", "Greg Rutkowski"), ("Brad Pitt", "identity", "Brad Pitt"),
    ("face of Angela Merkel", "identity", "Angela Merkel"), ("golden retriever", "object", "golden retriever"),
    ("church", "object", "church"), ("blue", "attribute", "blue")])
def test_infer_kind_free_text(target, kind, core):
    assert infer_kind(target)[0] == kind
    task, g = plan(target, model="sd15")
    assert task.category.kind == kind and task.targets == [core]
    assert any("inferred" in n and "--kind" in n for n in g["notes"])
    assert task.forget()["explicit"] and all(core in r.prompt for r in task.forget()["explicit"])


def test_kind_override_is_not_inferred():
    task, g = plan("Brad Pitt", kind="object", model="sd15")
    assert task.category.kind == "object" and not any("inferred" in n for n in g["notes"])
    with pytest.raises(UserError, match="does not fit"):
        plan("circle", kind="style")


# --- guidance --------------------------------------------------------------------------------

_PLANS = [dict(target="circle"), dict(target="striped"), dict(target="zorb"), dict(target="hex mark"),
          dict(target="red"), dict(target="circle", scope="many", extra_targets=["square"]),
          dict(target="striped", scope="sequential", extra_targets=["dotted"]),
          dict(target="nudity", model="sd15", triggers=["explicit", "implicit", "cross-lingual"]),
          dict(target="Van Gogh style", model="sd15"), dict(target="Brad Pitt", model="sd15"),
          dict(target="a cat on a mat, photo 17", kind="instance", model="sd15"),
          dict(target="Monet", kind="style", scope="many", extra_targets=["Van Gogh"], model="sd15")]


@pytest.mark.parametrize("kw", _PLANS, ids=lambda kw: kw["target"] + "-" + kw.get("scope", "single"))
def test_guidance_contents(kw):
    task, g = plan(**kw)
    assert set(g) >= {"category", "anchor_strategy", "prompt_sets", "judges", "methods", "aspects", "notes"}
    assert g["category"]["kind"] == task.category.kind and g["category"]["scope"] == task.category.scope
    assert g["methods"], "some installed method fits every leaf"
    for m in g["methods"]:
        assert m["name"] in REGISTRY
        if task.category.scope == "many":
            assert REGISTRY[m["name"]].multi_concept
    assert [a["aspect"] for a in g["aspects"]][:1] and len(g["aspects"]) == 6
    assert g["judges"]["task"] == task.judge
    for key in [f"{w}.{grp}" for w, groups in task.prompts.items() for grp in groups]:
        assert key in g["prompt_sets"], key


def test_carrier_bound_preservation_first_or_high():
    for kind in KINDS:
        for scope in SCOPES:
            for trig in (["explicit"], ["explicit", "implicit"], ["explicit", "cross-lingual"], list(TRIGGERS)):
                aspects = [a["aspect"] for a in leaf_guidance(kind, scope, trig)["aspects"]]
                if kind in CARRIER_BOUND:
                    assert "preservation" in aspects[:2], (kind, scope, trig, aspects)
                    if trig == ["explicit"]:
                        assert aspects[0] == "preservation"
                        assert "carrier" in leaf_guidance(kind, scope, trig)["aspects"][0]["focus"]
                elif trig == ["explicit"]:
                    assert aspects[0] == "forgetting" or scope != "single"
                if "implicit" in trig:
                    assert "robustness" in aspects[:3]


def test_implicit_trigger_promotes_adversarial_methods():
    names = [m["name"] for m in leaf_guidance("unsafe", "single", ["implicit"])["methods"]]
    assert names.index("rece") < names.index("uce") and names[-2:] == ["sld", "negprompt"]
    explicit = [m["name"] for m in leaf_guidance("unsafe", "single", ["explicit"])["methods"]]
    assert explicit.index("uce") < explicit.index("rece")


def test_static_method_table_agrees_with_registry():
    for name, cls in REGISTRY.items():
        if name in METHODS:
            assert METHODS[name]["multi"] == bool(cls.multi_concept), name
            assert (METHODS[name]["family"] in ("sampling baseline", "inference-time")) == (cls.kind == "sampling"), name
    assert set(REGISTRY) <= set(METHODS), "a registered method is missing from catigmu.METHODS"


def test_docs_table_is_generated_from_code():
    doc = (ROOT / "docs" / "catigmu.md").read_text(encoding="utf-8")
    assert markdown() in doc, "docs/catigmu.md is stale: run scripts/make_task_files.py --docs"
    level1 = doc.split("### Level 1")[1].split("###")[0]
    rows = [ln.split("|")[1].strip() for ln in level1.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows == list(KINDS)


# --- prompt sets -----------------------------------------------------------------------------

@pytest.mark.parametrize("target,name", [("circle", "object-circle"), ("striped", "style-striped"),
                                         ("zorb", "identity-zorb"), ("hex mark", "unsafe-mark")])
def test_mini_single_reuses_builtin_records(target, name):
    task, _ = plan(target)
    ref = mini_task(name)
    assert task.model_dump(exclude={"category"}) == ref.model_dump(exclude={"category"})
    assert set(task.category.trigger) == set(ref.category.trigger)


def test_many_and_sequential():
    many, g = plan("circle", scope="many", extra_targets=["square"])
    assert many.targets == ["circle", "square"] and many.category.scope == "many" and many.attack.prompts == 2
    assert many.anchor not in many.targets
    named = {t for r in many.forget()["explicit"] for t in many.targets if t in r.prompt}
    assert named == {"circle", "square"}
    assert all(many.anchor in r.stripped for r in many.forget()["explicit"])
    for recs in many.retain().values():
        for r in recs:
            assert not set(r.expect) & set(many.targets)
    seq, g = plan("striped", scope="sequential", extra_targets=["dotted"])
    assert seq.targets == ["striped", "dotted"] and seq.attack.prompts == 2
    assert [s["erase"] for s in g["sequence"]] == ["striped", "dotted"]
    assert g["sequence"][1]["forget_check"] == ["striped", "dotted"]
    assert all(not {"striped", "dotted"} & set(r.expect) for recs in seq.retain().values() for r in recs)


def test_free_text_marks_templates_and_placeholders():
    task, g = plan("Van Gogh style", model="sd15", triggers="explicit,cross-lingual")
    assert task.judge == "clip" and any("--clip clip:" in n for n in g["notes"])  # the model comes at evaluate
    assert g["prompt_sets"]["forget.paraphrase"]["status"].startswith("TEMPLATE")
    assert g["prompt_sets"]["forget.multilingual"]["status"].startswith("TO WRITE")
    assert g["prompt_sets"]["retain.other"]["status"].startswith("TO WRITE")
    assert all(r.stripped and "Van Gogh" not in r.stripped for r in task.forget()["explicit"])
    nude, g = plan("nude", model="sd15")
    assert nude.targets == ["nudity"] and nude.judge == "nudenet" and "implicit" in nude.forget()
    # NudeNet sees nudity only: the person is the only expectation, checked by the person-presence judge
    assert nude.carrier_judge == "clip-person"
    assert {c for grp in nude.prompts.values() for recs in grp.values() for r in recs for c in r.expect} == {"person"}


# --- files -----------------------------------------------------------------------------------

def test_write_plan_round_trips(tmp_path):
    for kw in (dict(target="striped"), dict(target="golden retriever", model="sd15", anchor="dog")):
        task, g = plan(**kw)
        out = write_plan(task, g, tmp_path / "t.yaml")
        text = out.read_text()
        assert text.startswith(MARKER)
        head = text.split("\nversion:")[0]
        assert all(ln.startswith("#") or not ln.strip() for ln in head.splitlines())
        assert yaml.safe_load("\n".join(ln[2:] for ln in head.splitlines()[4:] if ln.startswith("# ")))[
            "guidance"]["category"]["kind"] == task.category.kind
        assert load_task(str(out)) == task
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_plan_refuses_foreign_files(tmp_path):
    task, g = plan("circle")
    foreign = tmp_path / "notes.yaml"
    foreign.write_text("version: 1\n")
    for bad in (foreign, tmp_path):
        with pytest.raises(UserError) as e:
            write_plan(task, g, bad)
        assert "not a task file written by igmu plan" in str(e.value) and "\n" not in str(e.value)
    assert foreign.read_text() == "version: 1\n"
    with pytest.raises(UserError, match="cannot write"):
        write_plan(task, g, foreign / "sub" / "t.yaml")
    ours = write_plan(task, g, tmp_path / "ours.yaml")
    assert write_plan(task, g, ours).read_text() == plan_text(task, g)  # its own file is overwritten


def test_shipped_task_files_load_and_match_the_planner():
    script = _script()
    folder = ROOT / "tasks" / "mini"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(script.SHIPPED)
    for fname, kw in script.SHIPPED.items():
        path = folder / fname
        assert path.read_text().startswith(MARKER)
        task = load_task(str(path))
        assert task == plan(model="mini", **kw)[0], f"{fname} is stale: run scripts/make_task_files.py"
        assert task.images_per_prompt == 2
        assert task.attack.prompts == (2 if task.category.scope != "single" else 4)


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,needle", [
    (dict(target=""), "target is empty"), (dict(target="   "), "target is empty"),
    (dict(target="circle", extra_targets=[""]), "target is empty"),
    (dict(target="circle", kind="thing"), "valid kinds: object, style, identity, unsafe, attribute, instance"),
    (dict(target="circle", scope="all"), "valid scopes: single, many, sequential"),
    (dict(target="circle", triggers=["sideways"]), "valid triggers: explicit, implicit, cross-lingual"),
    (dict(target="circle", scope="many"), "needs at least two targets"),
    (dict(target="circle", scope="sequential"), "needs at least two targets"),
    (dict(target="circle", extra_targets=["square"]), "scope single takes one target"),
    (dict(target="circle", scope="many", extra_targets=["disc"]), "repeat"),
    (dict(target="circle", scope="many", extra_targets=["striped"]), "share a kind"),
    (dict(target="unicorn"), "not a mini-world concept"),
    (dict(target="circle", triggers=["implicit"]), "no implicit phrasings"),
    (dict(target="circle", kind="instance"), "does not fit"),
    (dict(target="circle", anchor="striped"), "another mini-world shape"),
])
def test_errors_are_one_clear_line(kw, needle):
    with pytest.raises(UserError) as e:
        plan(**kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
