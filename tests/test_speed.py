"""Speed work that must not change behaviour: frozen-model trajectories drawn ahead in batches (ESD), thread
counts set deliberately."""
import numpy as np
import pytest
import torch

from igmu.diffusion.arch import adapter_for
from igmu.diffusion.sampling import PartialTrajectories, sample_until
from igmu.models.load import load_pipeline


def _one_at_a_time(a, cond, null, steps, stop, gen):
    xt, t = sample_until(a, a.unet, cond, null, steps, stop, 3.0, gen)
    with torch.no_grad():
        return xt, t, a.denoise(None, xt, t, null), a.denoise(None, xt, t, cond)


# SD1 with its deterministic DDIM and with DDPM, which draws step noise; SDXL; FLUX.1, which samples without
# classifier-free guidance (its e_c, e_0 are one more batched call)
@pytest.mark.parametrize("family,sampler", [("sd1", "ddim"), ("sd1", "ddpm"), ("sdxl", None), ("flux", None)])
def test_batched_trajectories_are_the_one_at_a_time_ones(family, sampler, request):
    from diffusers import DDPMScheduler

    pipe = load_pipeline(str(request.getfixturevalue(f"tiny_{family}")))
    if sampler == "ddpm":
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    a = adapter_for(pipe)
    embs, _ = a.encode(["circle", ""])
    cond, null = embs[:1], embs[1:]
    stops, seeds = [2, 0, 3, 3, 1], [7, 1, 2, 3, 4]
    ref = [_one_at_a_time(a, cond, null, 4, s, torch.Generator().manual_seed(g)) for s, g in zip(stops, seeds)]
    for width in (1, 3):
        pt = PartialTrajectories(a, a.unet, cond, null, 4, stops, 3.0,
                                 [torch.Generator().manual_seed(g) for g in seeds], width=width)
        for i, r in enumerate(ref):
            got = pt.take(i)
            assert int(got[1]) == int(r[1])
            for x, y in zip((got[0], got[2], got[3]), (r[0], r[2], r[3])):
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
        with pytest.raises(IndexError):
            pt.take(0)  # taken already


def test_shared_trajectories_read_each_item_off_its_trajectory(tiny_sd1):
    a = adapter_for(load_pipeline(str(tiny_sd1)))
    embs, _ = a.encode(["circle", ""])
    stops = [2, 4, 0, 3, 1]  # share 2: T = 3 trajectories; items 0 and 3 on trajectory 0, 1 and 4 on 1, 2 on 2
    pt = PartialTrajectories(a, a.unet, embs[:1], embs[1:], 5, stops, 3.0,
                             [torch.Generator().manual_seed(i) for i in range(5)], width=2, share=2)
    for i, s in enumerate(stops):
        xt, t = sample_until(a, a.unet, embs[:1], embs[1:], 5, s, 3.0, torch.Generator().manual_seed(i % 3))
        torch.testing.assert_close(pt.take(i)[0], xt, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stops must lie"):
        PartialTrajectories(a, a.unet, embs[:1], embs[1:], 5, [5], 3.0, [torch.Generator()])


def test_esd_losses_do_not_depend_on_how_many_trajectories_are_drawn_together(tiny_sd1, tmp_path):
    from igmu.erase import run_erase
    from safetensors.torch import load_file

    losses = {}
    for width in (1, 4):
        seen = []

        def factory(total, seen=seen):
            return lambda k=1, **info: seen.append(info["loss"])
        art = run_erase(str(tiny_sd1), "esd", ["star"], None, [], None,
                        ["iterations=6", "sample_steps=4", f"xt_batch={width}", "lr=1e-3"], tmp_path / f"w{width}",
                        factory)
        losses[width] = (np.array(seen), load_file(str(art / "weights.safetensors")))
    np.testing.assert_allclose(losses[1][0], losses[4][0], rtol=1e-3)
    # batched kernels round differently, and Adam divides by sqrt(v): a gradient element near zero can move its
    # update by a visible fraction of lr (1.04e-6 seen on one CI machine); a wrong x_t would move it by ~lr
    for k, v in losses[1][1].items():
        torch.testing.assert_close(v, losses[4][1][k], rtol=1e-4, atol=1e-5)


def test_every_command_takes_threads(monkeypatch):
    from typer.testing import CliRunner

    from igmu.cli import app
    from igmu.utils.threads import default_threads

    before = torch.get_num_threads()
    try:
        r = CliRunner().invoke(app, ["methods", "--threads", "1"])
        assert r.exit_code == 0 and torch.get_num_threads() == 1
        r = CliRunner().invoke(app, ["world", "render", "--threads", "0", "--out", "x.png"])
        assert r.exit_code == 2 and "--threads must be between 1 and 1024" in r.output
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("igmu.utils.threads.available_cores", lambda: 8)
    assert default_threads() == 8 and default_threads(parallel=3) == 2 and default_threads(parallel=16) == 1
