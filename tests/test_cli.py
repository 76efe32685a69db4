from cli_helpers import cli as _cli
from cli_helpers import one_line_error as _one_line_error


def test_world_train_rejects_bad_stage_and_data(tmp_path):
    _one_line_error(_cli("world", "train", "bogus", "--data", str(tmp_path)), "unknown stage")
    _one_line_error(_cli("world", "train", "vae", "--data", str(tmp_path / "none")), "not a DataIGM-mini folder")


def test_world_render_and_build_data(tmp_path):
    r = _cli("world", "render", "--out", str(tmp_path / "grid.png"), "-n", "16")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "grid.json").is_file()
    r = _cli("world", "build-data", "--out", str(tmp_path / "d"), "--n-train", "5", "--n-test", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "train" / "metadata.jsonl").is_file()
    _one_line_error(_cli("world", "build-data", "--out", str(tmp_path / "e"), "--n-train", "0"), "must be between 1 and")


def test_generate_requires_a_prompt(tmp_path):
    _one_line_error(_cli("generate", "--out", str(tmp_path / "o")), "no prompt")


def test_erase_errors_are_one_line(tmp_path):
    _one_line_error(_cli("erase", "--method", "nope", "--target", "circle", "--out", str(tmp_path / "a")),
                    "unknown method 'nope'; available:")
    _one_line_error(_cli("erase", "--method", "uce", "--target", "circle", "--set", "bogus=1",
                         "--out", str(tmp_path / "a")), "has no option 'bogus'")
    _one_line_error(_cli("export", str(tmp_path), "--out", str(tmp_path / "m")), "not an igmu artifact")
    assert not (tmp_path / "a").exists()
