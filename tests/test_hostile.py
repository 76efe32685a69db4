"""The hostile-input suite (scripts/hostile_inputs.py, every case) and property tests (hypothesis) of the loaders
and of the command line's argument parsing: whatever the input, the result is valid or one UserError line."""
import importlib.util
import json
import math
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from igmu.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PROPS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _script():
    spec = importlib.util.spec_from_file_location("hostile_inputs", ROOT / "scripts" / "hostile_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_hostile_inputs_script_every_case_ends_cleanly(tmp_path):
    """At least 300 cases across every command: 0 tracebacks, 0 hangs (30 s each), 0 exit-0 runs with
    non-finite or invalid output, nothing executed from a pickle or a YAML tag, no foreign data lost."""
    res = _script().run_all(tmp_path)
    c = res["counts"]
    assert res["failures"] == [], res["failures"][:10]
    assert c["cases"] >= 300 and c["written"] >= 300, c
    assert c["traceback"] == c["hang"] == c["nonfinite"] == c["other"] == 0, c
    assert c["pickles_or_yaml_tags_executed"] == 0 and c["foreign_data_lost"] == 0, c
    assert c["ok"] >= 10 and c["error"] >= 300, c  # both kinds of ending are exercised
    commands = {o.case.args[0] if o.case.args else "" for o in res["outcomes"]}
    assert {"generate", "erase", "export", "evaluate", "bench", "report", "plan", "judge", "world",
            "methods"} <= commands


# --- property tests of the loaders --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 80, max_value=2 ** 80) | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=25)


@PROPS
@given(st.text(max_size=300))
def test_yaml_and_json_parsers_return_data_or_one_line(text):
    from igmu.utils.validate import parse_json, parse_yaml

    for parse in (parse_yaml, parse_json):
        try:
            parse(text, "input")
        except UserError as e:
            assert "\n" not in str(e)


@PROPS
@given(st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=6))
def test_yaml_alias_expansion_is_bounded_before_construction(depth, width):
    from igmu.utils.validate import MAX_YAML_NODES, parse_yaml

    lines = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * (width + 1))}]" for i in range(1, depth)]
    expanded = sum(2 * (width + 1) ** i for i in range(depth))
    try:
        parse_yaml("\n".join(lines), "bomb")
        assert expanded <= MAX_YAML_NODES * 1.1
    except UserError as e:
        assert "expands to more than" in str(e) and expanded > MAX_YAML_NODES / 2


task_like = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([1, "1", 2, None]), "name": st.text(max_size=8) | st.integers(),
    "category": st.fixed_dictionaries({"kind": st.sampled_from(["object", "style", "bogus", 5])}) | json_values,
    "targets": st.lists(st.sampled_from(["circle", "", " ", "square", "Circle"]) | json_values, max_size=3),
    "anchor": st.sampled_from([None, "", "circle", "square"]) | json_values,
    "preserve": st.lists(st.sampled_from(["star", "circle", ""]), max_size=2) | json_values,
    "prompts": st.just({"forget": {"explicit": ["a circle"]}}) | json_values,
    "images_per_prompt": st.integers(min_value=-2, max_value=10 ** 9) | json_values,
    "attack": st.fixed_dictionaries({}, optional={"lr": st.floats(), "steps": st.integers()}) | json_values,
    "bogus": json_values})


@PROPS
@given(task_like)
def test_task_loader_gives_a_task_or_one_line(data):
    from igmu.tasks.task import Task, task_from_dict

    try:
        t = task_from_dict(data, "task")
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(t, Task) and t.targets and all(x.strip() for x in t.targets)
    assert t.attack.lr > 0 and math.isfinite(t.attack.lr) and 1 <= t.images_per_prompt <= 10_000


@PROPS
@given(st.fixed_dictionaries({}, optional={
    "methods": st.lists(st.sampled_from(["uce", "bogus"]) | st.fixed_dictionaries(
        {"method": st.just("uce")}, optional={"set": st.dictionaries(st.sampled_from(["lamb", "x"]), json_values,
                                                                      max_size=2)}), max_size=2) | json_values,
    "tasks": st.lists(st.sampled_from(["mini:object-circle", "mini:bogus", "nope.yaml"]), max_size=2) | json_values,
    "seeds": st.lists(st.integers(min_value=-2, max_value=2 ** 70), max_size=2) | json_values,
    "evaluation": st.fixed_dictionaries({}, optional={"guidance": st.floats(), "steps": st.integers()}) | json_values,
    "resources": json_values, "bogus": json_values}))
def test_bench_config_loader_gives_a_config_or_one_line(tmp_path, data):
    import yaml

    from igmu.bench.config import load_config

    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        cfg, _ = load_config(p)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert all(0 <= s <= 2 ** 63 - 1 for s in cfg.seeds) and math.isfinite(cfg.evaluation.guidance)


results_like = st.fixed_dictionaries({"aggregates": st.dictionaries(
    st.sampled_from(["forgetting", "robustness", "quality"]), st.dictionaries(
        st.sampled_from(["target_shown", "groups", "retain", "unlearndiffatk"]),
        st.fixed_dictionaries({"value": st.floats() | st.none() | json_values, "lo": st.floats(), "hi": st.floats(),
                               "n": st.integers()}) | json_values, max_size=3), max_size=3) | json_values},
    optional={"records": st.lists(st.fixed_dictionaries({}, optional={
        "role": st.sampled_from(["original", "unlearned"]) | json_values, "set": st.sampled_from(["forget", "retain"])
        | json_values, "prompt": st.text(max_size=5) | json_values, "seed": st.integers() | json_values,
        "key": st.just("ab" * 32) | json_values, "target_shown": st.booleans() | json_values}), max_size=3),
        "task": json_values, "aspects": st.lists(st.sampled_from(["forgetting", "robustness", "x"])) | json_values,
        "cost": json_values, "settings": json_values, "schema_version": st.integers() | json_values})


@PROPS
@given(results_like)
def test_results_that_pass_the_schema_always_render(tmp_path_factory, res):
    from igmu.evaluation.results_schema import check_results
    from igmu.report.bench_report import load_bench, render_html, render_markdown, csv_rows

    try:
        check_results(json.loads(json.dumps(res)))
    except ValueError as e:
        assert "\n" not in str(e)
        return
    root = tmp_path_factory.mktemp("b")
    (root / "cells" / "c").mkdir(parents=True)
    (root / "bench.json").write_text(json.dumps({"schema": "igmu-bench", "schema_version": 1, "cells": [
        {"id": "c", "method": "uce", "task": "t", "seed": 0}]}))
    (root / "cells" / "c" / "results.json").write_text(json.dumps(res))
    b = load_bench(root)
    assert render_html(b) and render_markdown(b) and csv_rows(b) is not None


# --- property test of the command line's argument parsing -------------------------------------------------------

TOKENS = ["--prompt", "--prompts", "-n", "--seed", "--steps", "--guidance", "--batch-size", "--model",
          "--negative-prompt", "--out", "-o", "--", "-", "x", "0", "-1", "nan", "inf", "1e999", "2", "mini",
          "18446744073709551615", ""]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=6), max_size=8))
def test_generate_argument_parsing_ends_in_one_line(tmp_path_factory, argv):
    """Any token soup given to `igmu generate`, with --out at an existing file (so a command line that happens to be
    valid is still refused before any work): exit 2 and one line, never a traceback."""
    from cli_helpers import clean_error, run

    f = tmp_path_factory.mktemp("g") / "notes.txt"
    f.write_text("keep")
    r = run("generate", *argv, "--out", f)
    clean_error(r, "")
    assert f.read_text() == "keep"
