"""Issue #14: every example of careless or hostile input ends in one clear line or a correct result.

Driven in process (cli_helpers.run): no interpreter start and no torch import per case."""
import json
import os

import pytest
from cli_helpers import clean_error, run

from igmu.errors import UserError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    art = tmp_path_factory.mktemp("art") / "uce"
    r = run("erase", "--method", "uce", "--target", "circle", "--out", art)
    assert r.exit_code == 0, r.output
    return art


# --- data loss ---------------------------------------------------------------------------------------------------

def test_export_never_destroys_a_foreign_folder_or_a_file(artifact, tmp_path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    clean_error(run("export", artifact, "--out", foreign), "igmu never deletes it")
    clean_error(run("export", artifact, "--out", foreign, "--overwrite"), "igmu never deletes it")
    clean_error(run("export", artifact, "--out", notes), "is a file")
    clean_error(run("export", artifact, "--out", notes, "--overwrite"), "is a file")
    assert (foreign / "chapter1.tex").read_text() == "years of work" and sorted(os.listdir(foreign)) == ["chapter1.tex"]
    assert notes.read_text() == "my notes"
    # an earlier export is replaced only with --overwrite; an empty folder is fine
    out = tmp_path / "merged"
    out.mkdir()
    assert run("export", artifact, "--out", out).exit_code == 0
    clean_error(run("export", artifact, "--out", out), "pass --overwrite")
    r = run("export", artifact, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "model_index.json").is_file() and (out / "igmu_artifact_manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_atomic_writers_never_turn_a_file_into_a_folder_or_back(tmp_path):
    from igmu.utils.io import atomic_dir, atomic_path

    f = tmp_path / "f"
    f.write_text("keep")
    with pytest.raises(UserError, match="is a file"):
        with atomic_dir(f):
            pass
    with pytest.raises(UserError, match="is a folder"):
        with atomic_path(tmp_path):
            pass
    assert f.read_text() == "keep"


@pytest.mark.parametrize("cmd", [["generate", "--prompt", "x"], ["erase", "--method", "uce", "--target", "circle"],
                                 ["evaluate", "--task", "mini:object-circle", "--unlearned", "mini"],
                                 ["world", "build-data", "--n-train", "1", "--n-test", "1"],
                                 ["judge", "train", "--images", "."]])
def test_every_command_refuses_a_foreign_folder_and_a_file(cmd, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    clean_error(run(*cmd, "--out", foreign), "igmu never deletes it")
    clean_error(run(*cmd, "--out", foreign / "x.txt"), "is a file")
    assert (foreign / "x.txt").read_text() == "x"


# --- tracebacks --------------------------------------------------------------------------------------------------

def test_binary_latin1_and_deep_files_are_one_line(tmp_path):
    latin = tmp_path / "p.txt"
    latin.write_bytes("caf\u00e9 circle\n".encode("latin-1"))
    binary = tmp_path / "b.txt"
    binary.write_bytes(bytes(range(256)))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    out = tmp_path / "o"
    clean_error(run("generate", "--prompts", latin, "--out", out), "is not UTF-8 text (byte 0xe9 at offset 3)")
    clean_error(run("generate", "--prompts", binary, "--out", out), "is a binary file")
    clean_error(run("generate", "--prompts", deep, "--out", out), "nests deeper than 64 levels")
    clean_error(run("erase", "--method", "uce", "--target", "circle", "--config", latin, "--out", out), "not UTF-8")
    clean_error(run("evaluate", "--task", deep, "--unlearned", "mini", "--out", out), "nests deeper than 64 levels")
    clean_error(run("bench", "--config", binary, "--out", out), "is a binary file")
    assert not out.exists()


def test_seeds_beyond_signed_64_bit_are_one_line(tmp_path):
    for seed in ("18446744073709551615", str(2 ** 63), "-1"):
        clean_error(run("generate", "--prompt", "x", "--seed", seed, "--out", tmp_path / "o"),
                    "--seed must be between 0 and 2**63-1")
    # the last image's seed, seed + n - 1, must fit too
    clean_error(run("generate", "--prompt", "x", "--seed", str(2 ** 63 - 1), "-n", "2", "--out", tmp_path / "o"),
                "used up to seed + 1")
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"methods: [uce]\ntasks: [mini:object-circle]\nseeds: [{2 ** 70}]\n")
    clean_error(run("bench", "--config", cfg, "--out", tmp_path / "b"), "seeds.0")


def _bench_with_results(root, results_text):
    (root / "cells" / "c").mkdir(parents=True)
    (root / "bench.json").write_text(json.dumps({"schema": "igmu-bench", "schema_version": 1, "cells": [
        {"id": "c", "method": "uce", "task": "t", "seed": 0}]}))
    (root / "cells" / "c" / "results.json").write_text(results_text)
    return root


@pytest.mark.parametrize("results, needle", [
    ('{"aggregates": {"forgetting": {"target_shown": {"value": "0.5", "lo": 0, "hi": 1, "n": 2}}}}',
     "aggregates.forgetting.target_shown"),
    ('{"aggregates": {"forgetting": []}}', "aggregates.forgetting"),
    ('{"aggregates": {}, "records": [{"set": ["forget"]}]}', "records.0.set"),
    ('{"aggregates": {}, "task": "t"}', "task"),
    ('{"aggregates": {"robustness": {"groups": 3}}}', "groups"),
    ("[1, 2]", "not a mapping"),
    ('{"aggregates": ', "not valid JSON"),
])
def test_report_on_malformed_results_says_malformed(tmp_path, results, needle):
    b = _bench_with_results(tmp_path / "b", results)
    r = run("report", b)
    clean_error(r, "have a malformed results.json")
    assert needle in r.stderr and "has a results.json yet" not in r.stderr


# --- silent garbage ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opt, value, needle", [
    ("--guidance", "nan", "--guidance must be a finite number"), ("--guidance", "inf", "must be a finite number"),
    ("--guidance", "-inf", "must be a finite number"), ("--guidance", "1e308", "at most 100"),
    ("--steps", "0", "--steps must be between 1 and 1000, got 0"),
    ("--batch-size", "0", "--batch-size must be between 1 and 4096, got 0"), ("-n", "0", "-n must be between 1"),
])
def test_generate_refuses_what_it_silently_replaced(tmp_path, opt, value, needle):
    clean_error(run("generate", "--prompt", "x", opt, value, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


def test_nonfinite_method_options_are_refused_before_erasing(tmp_path):
    for s in ("lamb=.inf", "lamb=.nan", "lamb=-.inf"):
        clean_error(run("erase", "--method", "uce", "--target", "circle", "--set", s, "--out", tmp_path / "a"),
                    "non-finite")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--anchor", " ".join(["square"] * 300)], "anchor is 2099 characters long"),
    (["--preserve", " ".join(["star"] * 300)], "preserved concept is 1499 characters long"),
    (["--anchor", "circle"], "the --anchor 'circle' is one of the targets"),
    (["--anchor", "CIRCLE"], "is one of the targets"),
    (["--preserve", "circle"], "the --preserve 'circle' is also a target"),
    (["--preserve", ""], 'empty preserved concept; give the concept as text, e.g. --preserve "star"'),
    (["--target", "circle"], "the same target is given twice"),
])
def test_target_anchor_and_preserve_are_checked_alike(tmp_path, extra, needle):
    r = run("erase", "--method", "uce", "--target", "circle", *extra, "--out", tmp_path / "a")
    clean_error(r, needle)
    assert "--target" not in r.stderr or extra[0] == "--target"  # --preserve '' no longer suggests --target


def test_task_files_check_concepts_like_the_cli(tmp_path):
    from igmu.tasks.task import task_from_dict

    base = {"name": "t", "category": {"kind": "object"}, "targets": ["circle"],
            "prompts": {"forget": {"explicit": ["a circle"]}}}
    with pytest.raises(UserError, match="the anchor 'circle' is one of the targets"):
        task_from_dict({**base, "anchor": "circle"})
    with pytest.raises(UserError, match="also a target"):
        task_from_dict({**base, "preserve": ["Circle"]})
    with pytest.raises(UserError, match="non-finite|finite"):
        task_from_dict({**base, "attack": {"prompts": float("nan")}})
    assert task_from_dict({**base, "anchor": ""}).anchor == ""  # the empty prompt as anchor stays allowed


# --- denial of service -------------------------------------------------------------------------------------------

def test_yaml_bomb_in_a_bench_method_set_is_refused_at_once(tmp_path):
    parts = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]" for i in range(1, 9)]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("methods:\n  - {method: uce, set: {" + ", ".join(parts) + "}}\ntasks: [mini:object-circle]\n")
    clean_error(run("bench", "--config", cfg, "--out", tmp_path / "b"), "expands to more than 200,000 YAML nodes")


def test_progress_is_printed_as_plain_lines_when_not_on_a_terminal(monkeypatch, capsys):
    from igmu.cli import _progress

    monkeypatch.setenv("IGMU_PROGRESS_EVERY", "0")
    monkeypatch.delenv("IGMU_PROGRESS", raising=False)
    advance = _progress("erasing (esd)")(4)
    for _ in range(4):
        advance(1, loss=0.5)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("erasing (esd): 4/4 (100%)") and "loss=0.5" in lines[-1]
    assert "elapsed" in lines[0] and "left" in lines[0] and "\x1b" not in "".join(lines)  # no terminal codes
    monkeypatch.setenv("IGMU_PROGRESS_EVERY", "3600")
    advance = _progress("quick")(3)
    for _ in range(3):
        advance()
    assert capsys.readouterr().err == ""  # quick work prints nothing


# --- unclear messages --------------------------------------------------------------------------------------------

def test_folder_given_as_a_prompt_file_says_folder(tmp_path):
    clean_error(run("generate", "--prompts", tmp_path, "--out", tmp_path / "o"), "is a folder, not a file")


def test_evaluate_bad_clip_or_judge_fails_before_generating(tmp_path, monkeypatch):
    import igmu.generate

    def boom(*a, **k):
        raise AssertionError("generated images before checking --clip")

    monkeypatch.setattr(igmu.generate, "generate_images", boom)
    base = ["evaluate", "--task", "mini:object-circle", "--unlearned", "mini", "--out", tmp_path / "e",
            "--cache", tmp_path / "cache"]
    clean_error(run(*base, "--clip", "bogus"), "unknown CLIP-score model 'bogus' for --clip")
    clean_error(run(*base, "--clip", "clip:/nonexistent"), "no CLIP model folder at /nonexistent")
    clean_error(run(*base, "--judge", "bogus"), "unknown judge 'bogus'")
    assert not (tmp_path / "e").exists()


def test_usage_mistakes_are_one_line_too():
    clean_error(run("generate", "--seed", "abc", "--out", "x"), "Invalid value for '--seed'")
    clean_error(run("bogus"), "No such command 'bogus'")
    clean_error(run("export"), "Missing argument")
    assert run().exit_code == 0  # a bare `igmu` shows its help


# --- the batch size is part of an image's identity -----------------------------------------------------------------

def test_generations_record_the_batch_size_each_image_was_made_in(tmp_path):
    r = run("generate", "--prompt", "a red circle on a dark background", "-n", "3", "--steps", "1",
            "--batch-size", "2", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "g" / "generations.jsonl").read_text().splitlines()]
    assert [x["batch_size"] for x in recs] == [2, 2, 1]


# --- phase B: artifact integrity ------------------------------------------------------------------------------------

def _variant(artifact, tmp_path, name, manifest=None, weights=None):
    """A copy of `artifact` with its manifest changed by `manifest(m)` or its weights file replaced by bytes."""
    import shutil

    d = tmp_path / name
    shutil.copytree(artifact, d)
    if manifest is not None:
        m = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps(manifest(m)))
    if weights is not None:
        if weights == "missing":
            (d / "weights.safetensors").unlink()
        else:
            (d / "weights.safetensors").write_bytes(weights(d / "weights.safetensors"))
    return d


def _retensor(transform):
    """weights(path) -> bytes: the artifact's tensors saved again after transform(dict)."""
    def make(path):
        from safetensors.torch import load_file, save

        return save(transform(load_file(str(path))))
    return make


def _first_key_renamed(new):
    return _retensor(lambda t: {new if i == 0 else k: v for i, (k, v) in enumerate(t.items())})


@pytest.mark.parametrize("name, manifest, weights, needle", [
    ("list", lambda m: [m], None, "manifest.json is not a mapping"),
    ("no-base", lambda m: {k: v for k, v in m.items() if k != "base_model"}, None, "missing field 'base_model'"),
    ("base-5", lambda m: {**m, "base_model": 5}, None, "bad value for 'base_model'"),
    ("version-str", lambda m: {**m, "version": "1"}, None, "bad value for 'version'"),
    ("version-3", lambda m: {**m, "version": 3}, None, "this igmu reads up to 2"),
    ("cost-nan-str", lambda m: {**m, "cost": {**m["cost"], "params_changed": "many"}}, None, "cost.params_changed"),
    ("truncated", None, lambda p: p.read_bytes()[:-100], "not a readable safetensors file"),
    ("pickle", None, lambda p: __import__("pickle").dumps({"a": 1}), "not a readable safetensors file"),
    ("missing", None, "missing", "has no weights.safetensors"),
    ("no-dot", None, _first_key_renamed("unetweight"), "is not <component>.<parameter>"),
    ("dunder", None, _first_key_renamed("__class__.x"), "is not <component>.<parameter>"),
    ("config", None, _first_key_renamed("config.x"), "not a model component of this pipeline"),
    ("unknown-component", None, _first_key_renamed("textencoder9.x.weight"), "not a model component"),
    ("wrong-shape", None, _retensor(lambda t: {k: v[:1] for k, v in t.items()}), "does not fit this model"),
    ("nan-tensor", None, _retensor(lambda t: {k: v * float("nan") for k, v in t.items()}), "non-finite values"),
])
def test_damaged_artifacts_are_one_line(artifact, tmp_path, name, manifest, weights, needle):
    d = _variant(artifact, tmp_path, name, manifest, weights)
    clean_error(run("generate", "--model", d, "--prompt", "a circle", "-n", "1", "--steps", "1",
                    "--out", tmp_path / "g"), needle)
    clean_error(run("export", d, "--out", tmp_path / "m"), needle)
    assert not (tmp_path / "g").exists() and not (tmp_path / "m").exists()


def test_evaluate_checks_the_artifact_before_generating(artifact, tmp_path, monkeypatch):
    import igmu.generate

    monkeypatch.setattr(igmu.generate, "generate_images", lambda *a, **k: pytest.fail("generated first"))
    d = _variant(artifact, tmp_path, "v1", lambda m: {**m, "version": "1"})
    clean_error(run("evaluate", "--task", "mini:object-circle", "--unlearned", d, "--out", tmp_path / "e",
                    "--cache", tmp_path / "c"), "bad value for 'version'")


def test_artifact_based_on_itself_or_on_another_artifact_is_one_line(artifact, tmp_path):
    selfref = _variant(artifact, tmp_path, "self", lambda m: m)
    m = json.loads((selfref / "manifest.json").read_text())
    (selfref / "manifest.json").write_text(json.dumps({**m, "base_model": str(selfref)}))
    clean_error(run("export", selfref, "--out", tmp_path / "m"), "is itself an igmu artifact")
    chained = _variant(artifact, tmp_path, "chain", lambda m: {**m, "base_model": str(selfref)})
    clean_error(run("generate", "--model", chained, "--prompt", "x", "--out", tmp_path / "g"),
                "is itself an igmu artifact")


def test_base_fingerprint_mismatch_is_refused_unless_forced(artifact, tmp_path):
    mismatch = _variant(artifact, tmp_path, "other-base", lambda m: {**m, "base_model_hash": "0" * 64})
    clean_error(run("export", mismatch, "--out", tmp_path / "m"), "pass --force to apply it anyway")
    r = run("export", mismatch, "--out", tmp_path / "m", "--force")
    assert r.exit_code == 0, r.output
    assert "warning: artifact" in r.stderr and "applying it anyway (--force)" in r.stderr
    assert (tmp_path / "m" / "model_index.json").is_file()


# --- phase B: non-finite values are refused ------------------------------------------------------------------------

def test_nonfinite_training_loss_stops_at_its_step_and_names_lr(tiny_sd1, tmp_path):
    for lr in ("1e308", "1e30"):
        r = run("erase", "--model", tiny_sd1, "--method", "esd", "--target", "circle", "--set", "iterations=3",
                "--set", "sample_steps=2", "--set", f"lr={lr}", "--out", tmp_path / "a")
        clean_error(r, "the training loss became nan at step 2 of 3")
        assert f"Probably caused by lr={float(lr):g} (default 5e-05)" in r.stderr
    assert not (tmp_path / "a").exists()


def test_nonfinite_changed_tensors_refuse_the_artifact(monkeypatch, tmp_path):
    """A closed-form method (UCE) whose solve gives NaN: the artifact is not written, and the changed option is
    named (the loop's loss check does not apply to closed-form edits)."""
    import igmu.methods.uce as uce

    real = uce.ClosedFormEdit.__call__
    monkeypatch.setattr(uce.ClosedFormEdit, "__call__", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    r = run("erase", "--method", "uce", "--target", "circle", "--set", "lamb=3", "--out", tmp_path / "a")
    clean_error(r, "changed tensors non-finite (NaN or infinite")
    assert "Probably caused by lamb=3 (default 0.5)" in r.stderr and not (tmp_path / "a").exists()


def test_method_options_are_bounded_and_shown(tmp_path):
    clean_error(run("erase", "--method", "esd", "--target", "circle", "--set", "iterations=1000000000",
                    "--out", tmp_path / "a"), "less than or equal to 100000")
    clean_error(run("erase", "--method", "esd", "--target", "circle", "--set", "lr=inf", "--out", tmp_path / "a"),
                "finite number")
    clean_error(run("erase", "--method", "esd", "--target", "circle", "--set", "seed=-1", "--out", tmp_path / "a"),
                "greater than or equal to 0")
    r = run("methods", "esd")
    assert r.exit_code == 0 and ">= 1, <= 100,000" in r.output and "> 0, finite" in r.output


def test_nan_base_pipeline_is_refused(tiny_sd1, tmp_path):
    import torch

    from igmu.artifacts import load_model

    pipe = load_model(str(tiny_sd1))
    with torch.no_grad():
        next(pipe.unet.parameters()).view(-1)[0] = float("nan")
    pipe.save_pretrained(str(tmp_path / "nan-pipe"))
    for cmd in (["erase", "--method", "uce", "--target", "circle"], ["generate", "--prompt", "x"]):
        clean_error(run(*cmd, "--model", tmp_path / "nan-pipe", "--out", tmp_path / "o"), "has non-finite weights")


def test_generation_refuses_nonfinite_latents(tiny_sd1, tmp_path):
    """Weights that overflow only while sampling (finite on load): no image is written from infinite latents."""
    import torch

    from igmu.artifacts import load_model
    from igmu.errors import NonFiniteError
    from igmu.generate import GenSettings, generate_images

    pipe = load_model(str(tiny_sd1))
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(3e38)
    with pytest.raises(NonFiniteError, match="non-finite latents"):
        generate_images(pipe, ["a circle"], [0], GenSettings(steps=2, guidance=5.0))


def test_pickled_text_encoder_never_suggests_weights_only_false(tiny_sd1, tmp_path):
    import shutil

    import torch

    class Marker:
        def __reduce__(self):
            return (open, (str(tmp_path / "PWNED"), "w"))

    bad = tmp_path / "pickled"
    shutil.copytree(tiny_sd1, bad)
    for f in (bad / "text_encoder").glob("*.safetensors"):
        f.unlink()
    torch.save({"x": Marker()}, bad / "text_encoder" / "pytorch_model.bin")
    r = run("generate", "--model", bad, "--prompt", "x", "--out", tmp_path / "o")
    clean_error(r, "igmu never unpickles")
    assert "weights_only" not in r.stderr and "trust" not in r.stderr and not (tmp_path / "PWNED").exists()


def test_results_json_never_holds_nan(tmp_path):
    from igmu.utils.io import dumps_json, write_json

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}} and "NaN" not in text
    assert dumps_json((1, float("nan"))) == "[1, null]"
