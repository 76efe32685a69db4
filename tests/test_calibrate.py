"""igmu calibrate and presets: the rule's mechanics (budget caps, the ladder, the search), preset files in
igmu erase and bench configs, and their one-line errors."""
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from cli_helpers import cli, one_line_error
from igmu.bench import calibrate as C
from igmu.errors import UserError
from igmu.methods.base import Eraser, MethodConfig

ROOT = Path(__file__).resolve().parent.parent


class _Cfg(MethodConfig):
    iterations: int = Field(1000, ge=1)
    warmup: int = Field(200, ge=0)
    lr: float = Field(1e-5, gt=0)
    scale: float = Field(1.0, gt=0)
    keep: float = Field(0.5, gt=0)
    level: str = "medium"
    epochs: int = Field(2, ge=1)
    batch: int = Field(16, ge=1)
    images: int = Field(800, ge=1)
    steps: int = Field(50, ge=2)


class _Fake(Eraser):
    name = "fake"
    Config = _Cfg
    strength = {"lr": "lr", "scale": "up", "keep": "down", "level": ["weak", "medium", "strong", "max"]}
    budget = {"iterations": "steps", "warmup": "steps", "epochs": "epochs", "batch": "batch", "images": "images",
              "steps": "sample_steps"}


def test_budget_caps_by_role():
    caps = C.BUDGETS["small"]
    v = C.budget_values(_Fake(), caps)
    # one steps group shrinks by one ratio (the warm-up keeps its fifth); images and sampler steps are capped
    assert v["iterations"] == 100 and v["warmup"] == 20 and v["images"] == 64 and v["steps"] == 10
    # epochs: x 800/64 = 12.5 -> 25, held under 100 steps at ceil(64/16) = 4 steps an epoch -> 25
    assert v["epochs"] == 25
    assert C.budget_values(_Fake(), {}) == {}  # the published budget caps nothing


def test_every_method_declares_valid_knobs():
    from igmu.methods import REGISTRY

    for name, cls in REGISTRY.items():
        m = cls()
        strength, cost = C.knobs(m)  # raises on an unknown option, direction or role
        C.budget_values(m, C.BUDGETS["small"])
        assert C.rung_values(m, 0) == {k: C.published(m)[k] for k in strength}  # rung 0 is the published strength
        if C.method_family(m) == "fine-tuning":
            assert any(r.startswith("steps") or r == "epochs" for r in cost.values()), name


def test_ladder_moves_every_strength_knob():
    f = _Fake()
    assert C.rung_values(f, 0) == {"lr": 1e-5, "scale": 1.0, "keep": 0.5, "level": "medium"}
    r2 = C.rung_values(f, 2)
    assert r2["lr"] == pytest.approx(1e-4) and r2["scale"] == 2.0 and r2["keep"] == 0.25 and r2["level"] == "strong"
    r6 = C.rung_values(f, 6)
    assert r6["lr"] == pytest.approx(1e-2) and r6["scale"] == 8.0 and r6["level"] == "max"
    assert C.rung_values(f, 1)["lr"] == pytest.approx(3.162e-5)


def _fake_eval(forgetting: dict, log: list):
    def ev(r, c):
        log.append((r, c))
        return {"forgetting": forgetting[c][r], "retain": 1 - r / 10}
    return ev


def test_search_walks_the_ladder_and_stops_at_the_first_passing_rung():
    log = []
    # not monotone: rung 3 passes although rung 4 fails on b
    f = {"a": [1, .5, .9, .15, .1, 0, 0], "b": [1, 1, 1, .2, .3, 0, 0]}
    rung, status, seen = C.choose(_fake_eval(f, log), ["a", "b"], True)
    assert (rung, status) == (3, "reached")
    # a concept that fails ends its rung
    assert log == [(0, "a"), (1, "a"), (2, "a"), (3, "a"), (3, "b")]


def test_search_falls_back_to_the_best_tradeoff_with_every_concept_measured():
    log = []
    f = {"a": [1, 1, .8, .8, .5, .5, .3], "b": [.9, .9, .5, .5, .3, .3, .25]}
    rung, status, seen = C.choose(_fake_eval(f, log), ["a", "b"], True)
    assert status == "best-tradeoff"
    assert all(set(seen[r]) == {"a", "b"} for r in C.COARSE)  # b measured where a had already failed
    scores = {r: C.tradeoff(seen[r]) for r in C.COARSE}
    assert rung == max(scores, key=lambda r: (scores[r], -r))
    assert C.choose(_fake_eval(f, []), ["a"], False)[:2] == (0, "no-knob")


def _preset(path: Path, fingerprint: str, methods: dict) -> Path:
    path.write_text(yaml.safe_dump({"format": "igmu-preset", "version": 1, "model": "mini",
                                    "model_fingerprint": fingerprint, "methods": methods}))
    return path


@pytest.fixture(scope="module")
def mini_fp():
    from igmu.models.load import model_hash, resolve_model

    return model_hash(resolve_model("mini"))


def test_preset_entry_follows_the_variant(mini_fp, tmp_path):
    from igmu.methods import get_method
    from igmu.presets import resolve_preset

    p = _preset(tmp_path / "p.yaml", mini_fp, {
        "esd-x": {"method": "esd", "fixed": {"train_method": "xattn"}, "set": {"lr": 1e-3}},
        "esd-u": {"method": "esd", "fixed": {"train_method": "noxattn"}, "set": {"lr": 3e-4}}})
    esd = get_method("esd")
    assert resolve_preset(str(p), "mini", esd, {}).values == {"lr": 1e-3}
    assert resolve_preset(str(p), "mini", esd, {"train_method": "noxattn"}).entry == "esd-u"
    with pytest.raises(UserError, match="no esd entry for train_method=full"):
        resolve_preset(str(p), "mini", esd, {"train_method": "full"})
    with pytest.raises(UserError, match="no entry for method 'uce'"):
        resolve_preset(str(p), "mini", get_method("uce"), {})
    assert resolve_preset("published", "mini", esd, {}).manifest() == "published"


def test_erase_with_a_preset_records_it_and_set_overrides_it(mini_fp, tmp_path):
    from igmu.artifacts import load_artifact
    from igmu.erase import run_erase

    p = _preset(tmp_path / "p.yaml", mini_fp, {"uce": {"method": "uce", "set": {"erase_scale": 2.0, "lamb": 0.25}}})
    m = load_artifact(run_erase("mini", "uce", ["circle"], None, [], None, ["lamb=0.4"], tmp_path / "a",
                                preset=str(p)))[0]
    assert m["config"]["erase_scale"] == 2.0 and m["config"]["lamb"] == 0.4
    assert m["preset"]["entry"] == "uce" and m["preset"]["values"] == {"erase_scale": 2.0, "lamb": 0.25}
    m = load_artifact(run_erase("mini", "uce", ["circle"], None, [], None, [], tmp_path / "b", preset="published"))[0]
    assert m["preset"] == "published" and m["config"]["erase_scale"] == 1.0


def test_preset_errors_are_one_line(mini_fp, tiny_sd1, tmp_path):
    from igmu.erase import run_erase

    p = _preset(tmp_path / "p.yaml", mini_fp, {"uce": {"method": "uce", "set": {"erase_scale": 2.0}}})
    r = cli("erase", "--model", str(tiny_sd1), "--method", "uce", "--target", "circle", "--preset", str(p),
            "--out", str(tmp_path / "a"))
    one_line_error(r, "calibrated for another model")
    with pytest.raises(UserError, match="has no entry for method 'esd'"):
        run_erase("mini", "esd", ["circle"], None, [], None, [], tmp_path / "b", preset=str(p))
    (tmp_path / "junk.yaml").write_text("a: 1\n")
    with pytest.raises(UserError, match="is not an igmu preset file"):
        run_erase("mini", "uce", ["circle"], None, [], None, [], tmp_path / "c", preset=str(tmp_path / "junk.yaml"))
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_calibrating_on_a_test_concept_is_refused(tmp_path):
    r = cli("calibrate", "--methods", "uce", "--concepts", "square,disc", "--bench-config",
            str(ROOT / "benchmarks" / "mini.yaml"), "--out", str(tmp_path / "p.yaml"), "--work", str(tmp_path / "w"))
    one_line_error(r, "'circle' is a test concept of bench config")  # "disc" is a synonym of circle
    assert not (tmp_path / "p.yaml").exists()


def test_bench_config_preset_key(mini_fp, tmp_path):
    from igmu.bench.config import load_config
    from igmu.bench.runner import plan_cells

    p = _preset(tmp_path / "p.yaml", mini_fp, {"uce": {"method": "uce", "set": {"erase_scale": 2.0}}})
    cfg = {"model": "mini", "preset": "p.yaml", "tasks": ["mini:object-circle"],
           "methods": ["uce", {"label": "uce-published", "method": "uce", "preset": "published"}]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    c, _ = load_config(tmp_path / "b.yaml")
    cells = {x["method_label"]: x for x in plan_cells(c, tmp_path)}
    assert cells["uce"]["preset"]["values"] == {"erase_scale": 2.0} and cells["uce-published"]["preset"] == "published"
    assert cells["uce"]["id"] != cells["uce-published"]["id"]
    cfg["methods"] = ["esd"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="method 'esd': preset .* has no entry for method 'esd'"):
        load_config(tmp_path / "b.yaml")


@pytest.mark.slow
def test_calibrate_end_to_end_writes_a_preset_erase_uses(tmp_path):
    """UCE on the mini model, one prompt per set: the preset records the rule, the figures and the choice,
    `igmu erase --preset` applies it, and a rerun reuses every cached rung."""
    from igmu.artifacts import load_artifact
    from igmu.erase import run_erase
    from igmu.methods import get_method

    out, work = tmp_path / "mini.yaml", tmp_path / "w"
    bench = str(ROOT / "benchmarks" / "mini.yaml")
    setup = C.CalibrationSetup(model="mini", entries=C.entries_from(["uce"], bench), concepts=["square", "dotted"],
                               max_prompts=1, bench_config=bench, work=work)
    lines = []
    C.run_calibration(setup, out, echo=lines.append)
    p = yaml.safe_load(out.read_text())
    e = p["methods"]["uce"]
    assert p["rule"]["name"] == C.RULE and p["calibration"]["concepts"] == ["square", "dotted"]
    assert "circle" in p["calibration"]["test_concepts_excluded"]["concepts"]
    assert e["status"] in ("reached", "best-tradeoff", "no-knob") and e["rungs"][0]["rung"] == 0
    assert set(C.rung_values(get_method("uce"), 0)) <= set(e["set"])
    chosen = next(r for r in e["rungs"] if r["rung"] == e["rung"])
    for res in chosen["concepts"].values():
        assert res["n_forget"] == 1 and 0 <= res["forgetting"] <= 1 and "retain" in res
    assert any("uce rung 0" in ln for ln in lines)
    C.run_calibration(setup, out, echo=lines.append)  # every rung cached: the same entry
    assert yaml.safe_load(out.read_text())["methods"] == p["methods"]
    m = load_artifact(run_erase("mini", "uce", ["circle"], None, [], None, [], tmp_path / "a", preset=str(out)))[0]
    assert all(m["config"][k] == v for k, v in e["set"].items()) and m["preset"]["entry"] == "uce"


def _no_times(x):
    if isinstance(x, dict):
        return {k: _no_times(v) for k, v in x.items() if k != "erase_seconds"}
    return [_no_times(v) for v in x] if isinstance(x, list) else x


@pytest.mark.slow
def test_parallel_calibration_matches_one_at_a_time(tmp_path):
    """--parallel 2: two methods in worker processes at one thread each give the preset entries (and their
    order) of calibrating them one after the other at one thread; only the erase timings differ."""
    from igmu.utils.threads import set_threads

    bench = str(ROOT / "benchmarks" / "mini.yaml")
    docs = []
    for name, parallel in [("seq", 1), ("par", 2)]:
        setup = C.CalibrationSetup(model="mini", entries=C.entries_from(["negprompt", "uce"], bench),
                                   concepts=["square", "dotted"], max_prompts=1, bench_config=bench,
                                   work=tmp_path / f"w-{name}")
        if parallel == 1:
            set_threads(1)
        C.run_calibration(setup, tmp_path / f"{name}.yaml", echo=lambda m: None, parallel=parallel, threads=1)
        docs.append(yaml.safe_load((tmp_path / f"{name}.yaml").read_text()))
    set_threads(None)
    assert list(docs[0]["methods"]) == list(docs[1]["methods"]) == ["negprompt", "uce"]
    assert _no_times(docs[0]["methods"]) == _no_times(docs[1]["methods"])
