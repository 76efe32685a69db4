"""Device and precision: --device/--dtype, loading in any dtype, mixed-precision fine-tuning, one-line errors."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
from igmu.errors import UserError
from igmu.generate import GenSettings, generate_images, run_generate
from igmu.utils.device import Runtime, hardware_error, resolve_device, resolve_dtype

FAST = GenSettings(steps=3, guidance=5.0)


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    """A tiny SD1 pipeline saved in float16, the way checkpoints are usually distributed."""
    from igmu.models.tiny import make_tiny_pipeline

    path = tmp_path_factory.mktemp("fp16") / "sd1"
    make_tiny_pipeline("sd1").to(torch.float16).save_pretrained(str(path))
    return path


def _cli(args):
    from igmu.cli import app

    return CliRunner().invoke(app, args)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(UserError, match="CUDA is not available"):
                resolve_device(spec)
    for bad, what in (("tpu", "--device"), ("int8", "--dtype")):
        with pytest.raises(UserError, match=what):
            Runtime.resolve(bad, "auto") if what == "--device" else Runtime.resolve("cpu", bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the line a CUDA-less machine gives")
def test_cuda_without_cuda_is_one_line(tmp_path):
    for cmd in (["generate", "--prompt", "a circle"], ["erase", "--method", "uce", "--target", "circle"]):
        res = _cli(cmd + ["--device", "cuda", "--out", str(tmp_path / cmd[0])])
        assert res.exit_code == 2 and res.output.strip().startswith("error: --device cuda: CUDA is not available")
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / cmd[0]).exists()


def test_a_float16_checkpoint_loads_in_one_dtype_and_generates(tiny_fp16, tmp_path):
    pipe = load_model(str(tiny_fp16))  # default float32: the text encoder no longer stays in float16
    assert {pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float32}
    half = load_model(str(tiny_fp16), dtype=torch.bfloat16)
    assert {half.unet.dtype, half.text_encoder.dtype, half.vae.dtype} == {torch.bfloat16}
    a = generate_images(pipe, ["a circle"], [0], FAST)
    b = generate_images(half, ["a circle"], [0], FAST)
    assert a.shape == b.shape == (1, 16, 16, 3) and np.abs(a.astype(int) - b.astype(int)).mean() < 40
    out = run_generate(str(tiny_fp16), ["a circle"], 2, 0, FAST, tmp_path / "g", runtime=Runtime.resolve("cpu", "float16"))
    rec = json.loads((out / "generations.jsonl").read_text().splitlines()[0])
    assert rec["dtype"] == "float16" and rec["batch_size"] == 2


def test_attention_runs_through_sdpa(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert pipe.text_encoder.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("method, sets", [
    ("esd", ["iterations=2", "sample_steps=3"]),  # the default backward, loss-scaled in float16
    ("doco", ["iterations=3", "warm_up=1", "n_images=4", "sample_steps=3", "batch_size=2"]),  # its own backward
    ("salun", ["epochs=1", "forget_images=4", "retain_images=2", "sample_steps=3", "batch_size=2"]),  # masked layers
    ("uce", []),  # closed form, solved in float64
])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_methods_erase_in_half_precision_and_apply_to_any_dtype(tiny_fp16, tmp_path, method, sets, dtype):
    art = run_erase(str(tiny_fp16), method, ["circle"], None, [], None, sets, tmp_path / "a",
                    runtime=Runtime.resolve("cpu", dtype))
    manifest, tensors = load_artifact(art)
    assert manifest["runtime"]["dtype"] == dtype and manifest["tensor_dtypes"] == ["float32"]  # fp32 masters
    assert tensors and all(torch.isfinite(v).all() for v in tensors.values())
    for load_dtype in (torch.float32, torch.bfloat16):
        pipe = load_model(str(art), dtype=load_dtype)
        params = dict(pipe.unet.named_parameters())
        for k, v in tensors.items():
            p = params[k.split(".", 1)[1]]
            assert p.dtype == load_dtype and torch.equal(p.detach(), v.to(load_dtype))


def test_gradient_checkpointing_changes_nothing_in_float32(tiny_sd1, tmp_path):
    sets = ["iterations=2", "sample_steps=3", "train_method=full"]
    plain = load_artifact(run_erase(str(tiny_sd1), "esd", ["circle"], None, [], None, sets, tmp_path / "p"))[1]
    ckpt = load_artifact(run_erase(str(tiny_sd1), "esd", ["circle"], None, [], None, sets, tmp_path / "c",
                                   runtime=Runtime.resolve("cpu", "float32", gradient_checkpointing=True)))
    assert ckpt[0]["runtime"]["gradient_checkpointing"] is True
    assert plain.keys() == ckpt[1].keys() and all(torch.equal(plain[k], ckpt[1][k]) for k in plain)


def test_gradient_checkpointing_is_refused_for_inference_time_methods(tiny_sd1, tmp_path):
    res = _cli(["erase", "--model", str(tiny_sd1), "--method", "negprompt", "--target", "circle",
                "--gradient-checkpointing", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "trains nothing" in res.output


def test_hardware_errors_become_one_line():
    oom = hardware_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "igmu erase")
    assert "out of memory" in str(oom) and all(w in str(oom) for w in ("--dtype", "--gradient-checkpointing",
                                                                       "--batch-size"))
    half = hardware_error(RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\''))
    assert "float16 is not supported" in str(half) and "--dtype float32" in str(half)
    assert hardware_error(RuntimeError("shape mismatch")) is None


def test_out_of_memory_in_a_command_is_one_line(tiny_sd1, tmp_path, monkeypatch):
    import igmu.diffusion.sampling as S

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(S, "pipeline_images", oom)
    res = _cli(["generate", "--model", str(tiny_sd1), "--prompt", "a circle", "--batch-size", "4",
                "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert res.output.startswith("error: out of memory") and "--batch-size" in res.output
    assert not (tmp_path / "g").exists()


def test_the_default_batch_halves_until_it_fits(tiny_sd1, tmp_path, monkeypatch):
    import igmu.diffusion.sampling as S

    real = S.pipeline_images
    tried = []

    def small_memory(pipe, prompts, *a):
        tried.append(len(prompts))
        if len(prompts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(pipe, prompts, *a)

    monkeypatch.setattr(S, "pipeline_images", small_memory)
    out = run_generate(str(tiny_sd1), ["a circle", "a star"], 4, 0, FAST, tmp_path / "g")
    recs = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert tried == [8, 4, 2, 2, 2, 2] and {r["batch_size"] for r in recs} == {2} and len(recs) == 8
    monkeypatch.setattr(S, "pipeline_images", real)
    want = generate_images(load_model(str(tiny_sd1)), ["a circle"] * 4 + ["a star"] * 4, [0, 1, 2, 3] * 2, FAST, 2)
    from PIL import Image

    got = np.stack([np.asarray(Image.open(out / r["file"])) for r in recs])
    assert np.array_equal(got, want)  # the same images as a batch-2 run


def test_a_pipeline_class_a_method_cannot_edit_is_one_line(tmp_path):
    from igmu.models.tiny import make_tiny_pipeline

    for kind, method in (("sdxl", "advunlearn"), ("sd3", "salun")):
        make_tiny_pipeline(kind).save_pretrained(str(tmp_path / kind))
        res = _cli(["erase", "--model", str(tmp_path / kind), "--method", method, "--target", "circle",
                    "--out", str(tmp_path / method)])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert res.output.startswith("error: ") and not (tmp_path / method).exists()


def test_gpu_slots():
    from igmu.bench.runner import gpu_slots

    assert gpu_slots(4, 1) == [[0], [1], [2], [3]]
    assert gpu_slots(4, 2) == [[0, 1], [2, 3]]
    assert gpu_slots(3, 2) == [[0, 1]]
    assert gpu_slots(2, 0.5) == [[0], [1], [0], [1]]
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        gpu_slots(0, 1)
    with pytest.raises(UserError, match="only 2"):
        gpu_slots(2, 3)


def test_bench_runtime_keys(tmp_path):
    from igmu.bench.config import BenchConfig
    from igmu.bench.runner import cell_runtime

    cfg = BenchConfig(methods=["uce"], tasks=["mini:object-circle"])
    assert cfg.runtime_key() == {} and cell_runtime(cfg).device.type == "cpu"
    cfg = BenchConfig(methods=["uce"], tasks=["mini:object-circle"], dtype="bfloat16")
    assert cfg.runtime_key()["dtype"] == "bfloat16" and cell_runtime(cfg).dtype == torch.bfloat16
    with pytest.raises(Exception, match="device must be"):
        BenchConfig(methods=["uce"], tasks=["mini:object-circle"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            cell_runtime(BenchConfig(methods=["uce"], tasks=["mini:object-circle"], resources={"gpus": 1}))


def test_evaluation_loads_and_keys_images_by_precision(tiny_sd1, tmp_path):
    from igmu.evaluation.cache import Cache
    from igmu.evaluation.evaluate import EvalConfig, _Models

    half = _Models({"original": str(tiny_sd1)}, Cache(tmp_path), EvalConfig(runtime=Runtime.resolve("cpu", "bfloat16")))
    full = _Models({"original": str(tiny_sd1)}, Cache(tmp_path), EvalConfig())
    assert half.pipe("original").unet.dtype == torch.bfloat16
    assert half.key("original", "a circle", 0, 8) != full.key("original", "a circle", 0, 8)
    from igmu.evaluation.cache import image_key  # CPU float32 keys are the ones they always were
    assert full.key("original", "a circle", 0, 8) == image_key(full.fp["original"], "a circle", 0, GenSettings(), 8)
