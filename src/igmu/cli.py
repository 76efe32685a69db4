"""igmu command line. Every user mistake ends in one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="igmu: machine unlearning for image generation models.")
world = typer.Typer(no_args_is_help=True, help="The embedded mini world: data, training recipes, judges.")
app.add_typer(world, name="world")


def _quiet_libs():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings
    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _fail(msg: str):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        _quiet_libs()
        try:
            return fn(*a, **k)
        except UserError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; nothing partial was left under the output name")
    return wrapper


def _progress(desc: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    def factory(total: int):
        p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                     transient=False, disable=not sys.stderr.isatty() and os.environ.get("IGMU_PROGRESS") != "1")
        p.start()
        task = p.add_task(desc, total=total)

        def advance(k: int = 1, **info):
            p.update(task, advance=k, description=desc + "".join(
                f" {a}={b:.4g}" if isinstance(b, (int, float)) else f" {a}={b}" for a, b in info.items()))
            if p.tasks[0].completed >= total:
                p.stop()
        return advance
    return factory


@app.command()
@handles_errors
def generate(
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="File of prompts: one per line, or DataIGM JSON."),
    model: str = typer.Option("mini", "--model", "-m", help="'mini', a local diffusers pipeline folder, or a hub id."),
    n: int = typer.Option(8, "-n", help="Images per prompt."),
    seed: int = typer.Option(0, "--seed", help="Image j of each prompt uses seed+j."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (default 20)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default 5.0)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt"),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per forward batch (default 64)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (PNGs + generations.jsonl)."),
):
    """Generate seeded images; writes PNGs and a JSONL of (prompt, seed, settings, file)."""
    from .generate import DEFAULT_BATCH, DEFAULT_GUIDANCE, DEFAULT_STEPS, GenSettings, read_prompt_file, run_generate

    if prompt and prompts:
        raise UserError("give --prompt or --prompts, not both")
    plist = list(prompt or []) if not prompts else read_prompt_file(prompts)
    if not plist:
        raise UserError("no prompt given; use --prompt \"...\" or --prompts FILE")
    s = GenSettings(steps=steps or DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE if guidance is None else guidance,
                    negative_prompt=negative_prompt)
    res = run_generate(model, plist, n, seed, s, out, batch_size or DEFAULT_BATCH, _progress("generating"))
    typer.echo(f"wrote {len(plist) * n} images and generations.jsonl to {res}")


@app.command()
@handles_errors
def methods():
    """List the unlearning methods: mechanism, what they change, source."""
    from rich.console import Console
    from rich.table import Table

    from .methods import REGISTRY

    t = Table("method", "mechanism", "changes", "multi-concept", "source")
    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        t.add_row(name, m.summary, m.changes, "yes" if m.multi_concept else "no", m.source)
    Console(width=200).print(t)


@app.command()
@handles_errors
def erase(
    method: str = typer.Option(..., "--method", help="Method name (see: igmu methods)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Concept to erase (repeatable)."),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="Concept to map the target onto."),
    preserve: Optional[List[str]] = typer.Option(None, "--preserve", help="Concept to keep (repeatable)."),
    model: str = typer.Option("mini", "--model", "-m"),
    config: Optional[str] = typer.Option(None, "--config", help="YAML of method options."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override one option: key=value (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact folder to write."),
):
    """Erase concept(s) from a model; writes an artifact (changed weights + manifest)."""
    from .methods.artifact import load_artifact, run_erase

    res = run_erase(model, method, list(target or []), anchor, list(preserve or []), config, list(set_ or []), out,
                    _progress(f"erasing ({method})"))
    cost = load_artifact(res)[0]["cost"]
    typer.echo(f"wrote artifact {res} ({cost['params_changed']} parameters changed, {cost['erase_seconds']:.2f} s)")


@app.command("export")
@handles_errors
def export_cmd_top(artifact: Path = typer.Argument(..., help="Artifact folder from igmu erase."),
                   out: Path = typer.Option(..., "--out", "-o"),
                   base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the manifest's).")):
    """Write a merged diffusers pipeline folder (base model + artifact) that plain diffusers loads."""
    from .methods.artifact import export_merged

    typer.echo(f"merged pipeline written to {export_merged(artifact, out, base)}")


@world.command("build-data")
@handles_errors
def build_data_cmd(out: Path = typer.Option(..., "--out", "-o"), seed: int = typer.Option(0, "--seed"),
                   n_train: int = typer.Option(40000, "--n-train"), n_test: int = typer.Option(4000, "--n-test")):
    """Write DataIGM-mini: labeled renders, captions, splits and forget/retain prompt sets."""
    from .utils.io import check_writable_dir
    from .world.data import build_data

    if n_train < 1 or n_test < 1:
        raise UserError("--n-train and --n-test must be at least 1")
    check_writable_dir(out.parent)
    adv = _progress("rendering")(n_train + n_test)
    build_data(out, seed, n_train, n_test, progress=adv)
    typer.echo(f"wrote DataIGM-mini ({n_train} train, {n_test} test) to {out}")


@world.command("build-tokenizer")
@handles_errors
def build_tokenizer_cmd(out: Optional[Path] = typer.Option(None, "--out"), seed: int = typer.Option(0, "--seed")):
    """Learn the world's CLIP-format BPE tokenizer (default: into the package assets)."""
    from .models.tokenizer import TOKENIZER_DIR
    from .world.tokenizer import build_tokenizer

    tok = build_tokenizer(out or TOKENIZER_DIR, seed)
    typer.echo(f"tokenizer with {len(tok)} tokens written to {out or TOKENIZER_DIR}")


STAGES = ("vae", "unet", "detector", "clip")


@world.command("train")
@handles_errors
def train_cmd(stage: str = typer.Argument(..., help="vae | unet | detector | clip"),
              data: Path = typer.Option(Path("data/dataigm-mini"), "--data"),
              work: Path = typer.Option(Path("runs/mini"), "--work", help="Checkpoints (vae, unet); resumable."),
              steps: Optional[int] = typer.Option(None, "--steps"), seed: int = typer.Option(0, "--seed"),
              batch: Optional[int] = typer.Option(None, "--batch"), lr: Optional[float] = typer.Option(None, "--lr"),
              device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (unet, clip)"),
              init_from: Optional[Path] = typer.Option(None, "--init-from",
                                                       help="unet: start from this pipeline folder's weights"),
              stop_at: Optional[int] = typer.Option(None, "--stop-at", help="unet: stop after this step"),
              uniform: bool = typer.Option(False, "--uniform",
                                           help="unet: sample scene kinds uniformly (no two-object over-sampling)")):
    """Train one stage of the mini model or of the judges (resumes from --work checkpoints)."""
    from .world.data import load_split  # noqa: F401  (validates --data below)

    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    if not (data / "train" / "metadata.jsonl").is_file():
        raise UserError(f"{data} is not a DataIGM-mini folder; build it with: igmu world build-data --out {data}")
    for name, v in (("--steps", steps), ("--batch", batch), ("--stop-at", stop_at)):
        if v is not None and v < 1:
            raise UserError(f"{name} must be at least 1, got {v}")
    if lr is not None and lr <= 0:
        raise UserError(f"--lr must be positive, got {lr}")
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise UserError(f"--device must be cpu, cuda or auto, got {device!r}")
    if (init_from or stop_at or uniform) and stage != "unet":
        raise UserError("--init-from, --stop-at and --uniform apply to the unet stage only")
    if init_from and not (init_from / "unet" / "config.json").is_file():
        raise UserError(f"--init-from {init_from} is not a diffusers pipeline folder (no unet/config.json)")
    kw = {"seed": seed} | {k: v for k, v in (("steps", steps), ("batch", batch), ("lr", lr)) if v is not None}
    if stage in ("unet", "clip"):
        kw["device"] = device
    if stage == "vae":
        from .world.train import train_vae
        train_vae(data, work, **kw)
    elif stage == "unet":
        from .world.train import train_unet
        train_unet(data, work, init_from=init_from, stop_at=stop_at, **kw, **({"kind_share": None} if uniform else {}))
    elif stage == "detector":
        from .world.judges import train_detector
        card = train_detector(data, **kw)
        typer.echo(f"detector test accuracy: {card['test_accuracy']}")
    else:
        from .world.judges import train_clip
        card = train_clip(data, **kw)
        typer.echo(f"mini CLIP caption top-1: {card['caption_top1']:.3f} among {card['candidates']} captions")


@world.command("export")
@handles_errors
def export_cmd(work: Path = typer.Option(Path("runs/mini"), "--work"), out: Optional[Path] = typer.Option(None, "--out")):
    """Assemble trained weights into a diffusers pipeline folder (default: the shipped mini model)."""
    from .models.load import MINI_DIR
    from .world.train import export_pipeline

    if not (work / "unet_ckpt.safetensors").is_file():
        raise UserError(f"no trained UNet in {work}; run: igmu world train unet --work {work}")
    res = export_pipeline(work, out or MINI_DIR)
    typer.echo(f"pipeline written to {res}")


@world.command("render")
@handles_errors
def render_cmd(out: Path = typer.Option(..., "--out"), n: int = typer.Option(64, "-n"), seed: int = typer.Option(0, "--seed")):
    """Render a grid of random scenes with their canonical captions (a quick look at the world)."""
    import json

    import numpy as np
    from PIL import Image

    from .utils.io import atomic_path
    from .world.captions import canonical
    from .world.render import render
    from .world.scenes import sample_scene

    if n < 1 or n > 4096:
        raise UserError("-n must be between 1 and 4096")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    imgs = [render(s) for s in scenes]
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    grid = np.zeros((rows * 32, cols * 32, 3), np.uint8)
    for k, im in enumerate(imgs):
        grid[(k // cols) * 32:(k // cols + 1) * 32, (k % cols) * 32:(k % cols + 1) * 32] = im
    with atomic_path(out) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps([canonical(s) for s in scenes], indent=1))
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


def main():
    app()


if __name__ == "__main__":
    main()
