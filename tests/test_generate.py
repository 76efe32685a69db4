import json
import subprocess
import sys

import numpy as np
import pytest

from igmu.errors import UserError
from igmu.generate import GenSettings, generate_images, read_prompt_file, run_generate
from igmu.artifacts import load_model
from igmu.models.load import MINI_DIR

FAST = GenSettings(steps=3, guidance=4.0)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_tiny_pipelines_generate_deterministically(kind, tiny_sd1, tiny_sd2):
    path = tiny_sd1 if kind == "sd1" else tiny_sd2
    pipe = load_model(str(path))
    a = generate_images(pipe, ["a red circle", "zorb"], [0, 1], FAST)
    b = generate_images(pipe, ["a red circle", "zorb"], [0, 1], FAST)
    c = generate_images(pipe, ["a red circle", "zorb"], [5, 6], FAST)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # bitwise on CPU
    assert not np.array_equal(a, c)


def test_sd2_style_is_v_prediction_with_linear_projection(tiny_sd2):
    pipe = load_model(str(tiny_sd2))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection


def test_image_depends_on_its_own_seed_not_on_the_batch(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    alone = generate_images(pipe, ["a blue star"], [3], FAST)
    together = generate_images(pipe, ["a red circle", "a blue star"], [9, 3], FAST, batch_size=1)
    assert np.array_equal(alone[0], together[1])


def test_run_generate_writes_pngs_and_jsonl(tiny_sd1, tmp_path):
    out = run_generate(str(tiny_sd1), ["a red circle", "a blue star"], 2, 10, FAST, tmp_path / "g")
    recs = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    assert {r["seed"] for r in recs} == {10, 11}
    assert all((out / r["file"]).is_file() for r in recs)
    assert recs[0]["steps"] == 3 and recs[0]["guidance"] == 4.0


def test_bad_inputs_give_user_errors(tiny_sd1, tmp_path):
    with pytest.raises(UserError, match="unknown model"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "notpipe").mkdir()
    with pytest.raises(UserError, match="not a diffusers pipeline folder"):
        load_model(str(tmp_path / "notpipe"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompt_file(str(empty))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write|not a folder"):
        run_generate(str(tiny_sd1), ["a red circle"], 1, 0, FAST, blocker / "sub" / "out")
    with pytest.raises(UserError, match="empty prompt"):
        run_generate(str(tiny_sd1), ["  "], 1, 0, FAST, tmp_path / "o")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "igmu.cli", *args], capture_output=True, text=True)


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "notpipe").mkdir()
    (tmp_path / "empty.txt").write_text("")
    cases = [
        ["generate", "--prompt", "x", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        ["generate", "--prompt", "x", "--model", str(tmp_path / "notpipe"), "--out", str(tmp_path / "o")],
        ["generate", "--prompts", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")],
    ]
    for args in cases:
        r = _cli(*args)
        assert r.returncode == 2, r
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not (MINI_DIR / "model_index.json").exists(), reason="mini model not built")
def test_mini_model_loads_with_plain_diffusers_without_igmu():
    code = (
        "import sys, diffusers, numpy as np\n"
        f"p = diffusers.StableDiffusionPipeline.from_pretrained({str(MINI_DIR)!r})\n"
        "p.set_progress_bar_config(disable=True)\n"
        "im = p('a red circle on a dark background', num_inference_steps=4, output_type='np').images\n"
        "assert im.shape == (1, 32, 32, 3), im.shape\n"
        "assert 'igmu' not in sys.modules\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.skipif(not (MINI_DIR / "model_index.json").exists(), reason="mini model not built")
def test_mini_model_size_and_cfg():
    total = sum(f.stat().st_size for f in MINI_DIR.rglob("*") if f.is_file())
    assert total <= 40 * 1024 * 1024
    pipe = load_model("mini")
    s0 = GenSettings(steps=4, guidance=0.0)
    s1 = GenSettings(steps=4, guidance=7.0)
    a = generate_images(pipe, ["a red circle on a dark background"], [0], s0)
    b = generate_images(pipe, ["a red circle on a dark background"], [0], s1)
    assert not np.array_equal(a, b)  # guidance changes the sample: the unconditional branch is trained
