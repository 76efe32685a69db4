"""igmu command line. Every user mistake ends in one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
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


THREADS_HELP = ("CPU threads torch may use (default: OMP_NUM_THREADS if set, else the cores available; "
                "see docs/performance.md).")


def handles_errors(fn):
    """One line and exit 2 for a UserError; and every command takes --threads: a command that does not declare
    its own gets the option here, and torch's thread count is set to it before the command runs."""
    own_threads = "threads" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*a, **k):
        _quiet_libs()
        try:
            if not own_threads:
                from .utils.threads import set_threads

                set_threads(k.pop("threads", None))
            return fn(*a, **k)
        except UserError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; nothing partial was left under the output name")
    if not own_threads:
        sig = inspect.signature(fn, eval_str=True)
        opt = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int],
                                default=typer.Option(None, "--threads", help=THREADS_HELP))
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), opt])
        wrapper.__annotations__ = {**typing.get_type_hints(fn), "threads": Optional[int]}
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
    """List the unlearning methods: mechanism, what they change, the architectures they run on, source."""
    from rich.console import Console
    from rich.table import Table

    from .methods import REGISTRY

    from .methods.support import COLUMNS, cell

    t = Table("method", "mechanism", "changes", "multi-concept", "architectures", "source")
    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        runs = [col for col, fam in COLUMNS.items() if cell(name, fam)[0] == "yes"]
        t.add_row(name, m.summary, m.changes, "yes" if m.multi_concept else "no", ", ".join(runs), m.source)
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
    from .artifacts import load_artifact
    from .erase import run_erase

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
    from .artifacts import export_merged

    typer.echo(f"merged pipeline written to {export_merged(artifact, out, base)}")


judge_app = typer.Typer(no_args_is_help=True, help="Judges: list their cards, train an IGMU-style CLIP head.")
app.add_typer(judge_app, name="judge")


@app.command()
@handles_errors
def evaluate(
    task: Optional[str] = typer.Option(None, "--task", help="Task YAML file, or a task source's: mini:<name> (e.g. mini:style-striped). Not needed for --layout igmu or folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json and summary.md (layouts igmu and folder: also summary.csv)."),
    original: str = typer.Option("mini", "--original", help="The model before unlearning: 'mini', a pipeline folder or hub id."),
    unlearned: Optional[str] = typer.Option(None, "--unlearned", help="Artifact folder from igmu erase, or a pipeline folder."),
    images: Optional[Path] = typer.Option(None, "--images", help="Score pre-generated images instead (see --layout)."),
    layout: str = typer.Option("igmu", "--layout", help="Layout of --images: igmu (IGMU's released <Concept>/{forgot,unrelated,remove_word}/<Method>/<i>_<j>_<k>.png), igmu-task (<task>/<forget|retain>/<method>/...), folder (<set>/<method>/*.png)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="layout igmu: the Benchmarking_prompts folder (default: beside --images); layout folder: a prompts file (CSV file,prompt or JSON {file: prompt})."),
    concept: Optional[str] = typer.Option(None, "--concept", help="layout folder: the concept the judge looks for (e.g. nudity); layout igmu: score only this concept folder."),
    method: Optional[str] = typer.Option(None, "--method", help="layout igmu-task: the method folder to score."),
    original_method: str = typer.Option("original", "--original-method", help="layout igmu-task: the reference model's folder."),
    aspects: str = typer.Option(",".join(("forgetting", "preservation", "quality", "alignment", "robustness")),
                                "--aspects", help="Comma-separated subset of the five aspects."),
    judge: Optional[List[str]] = typer.Option(None, "--judge", help="Judge spec (default: the task's): nudenet, clip:PATH, clip-person:PATH, clip-head:DIR, a plug-in's (mini, mini-clip). Layouts igmu/folder: Concept=SPEC per concept (repeatable)."),
    carrier_judge: Optional[str] = typer.Option(None, "--carrier-judge", help="Judge of the prompts' expected concepts (default: the task's carrier_judge, else the judge)."),
    clip: Optional[str] = typer.Option(None, "--clip", help="CLIP for the CLIP score and CSDR, and for tasks' bare clip / clip-person judges: clip:PATH (a local CLIP folder) or a plug-in's (mini-clip). Default: the mini world's for its own images; required for others."),
    features: Optional[str] = typer.Option(None, "--features", help="FID/KID feature network: inception (needs --fid-weights), clip:PATH, or a plug-in's (mini-clip). Default: decided from the images."),
    fid_weights: Optional[Path] = typer.Option(None, "--fid-weights", help="Local FID Inception weights (pt_inception-2015-12-05-6726825d.pth): makes Inception the FID/KID features."),
    perceptual: Optional[str] = typer.Option(None, "--perceptual", help="Perceptual distance: lpips (needs --lpips-weights), lpips:vgg, or a plug-in's (mini). Default: decided from the images."),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="Local torchvision backbone weights for LPIPS (alexnet-owt-7be5be79.pth, or vgg16-397923af.pth with --lpips-net vgg)."),
    lpips_net: str = typer.Option("alex", "--lpips-net", help="LPIPS backbone: alex or vgg."),
    n: Optional[int] = typer.Option(None, "-n", help="Images per prompt (default: the task's)."),
    attack_prompts: Optional[int] = typer.Option(None, "--attack-prompts", help="UnlearnDiffAtk prompts (default: the task's; 0: none)."),
    seed: int = typer.Option(0, "--seed"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default 20)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (default 5.0)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache folder (default $IGMU_CACHE or ~/.cache/igmu)."),
):
    """Evaluate an unlearned model on a task (forgetting, preservation, quality, alignment, robustness, cost), or
    score a tree of pre-generated images (--images)."""
    from .evaluation.cache import Cache
    from .evaluation.evaluate import EvalConfig, check_aspects, evaluate as run_eval, write_results
    from .evaluation.summary import summary_markdown
    from .generate import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenSettings
    from .tasks import load_task
    from .utils.io import check_writable_dir

    layouts = ("igmu", "igmu-task", "folder")
    if images is not None and layout not in layouts:
        raise UserError(f"unknown --layout {layout!r}; layouts: {', '.join(layouts)}")
    if lpips_net not in ("alex", "vgg"):
        raise UserError(f"--lpips-net must be alex or vgg, got {lpips_net!r}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").exists())):
        raise UserError(f"--out {out} exists and is not an igmu evaluation folder; choose a new folder")
    check_writable_dir(out.parent if not out.exists() else out)

    def progress(total, desc):
        return _progress(desc)(total)

    if images is not None and layout in ("igmu", "folder"):
        from .evaluation.layout import FolderLayout, ReleasedLayout
        from .evaluation.layout_score import score_layout, summary_markdown as layout_md, write_layout_results
        from .evaluation.registry import MetricOptions

        if unlearned or task:
            raise UserError(f"--layout {layout} scores the tree as it is: drop --task and --unlearned")
        lay = (ReleasedLayout(images, prompts, [concept] if concept else None) if layout == "igmu"
               else FolderLayout(images, concept, prompts))
        res = score_layout(lay, layout, list(judge or []), clip, Cache(cache), progress,
                           MetricOptions(clip=clip), seed)
        path = write_layout_results(res, out)
        typer.echo(layout_md(res))
        typer.echo(f"results: {path / 'results.json'}; table: {path / 'summary.csv'}")
        return
    if not task:
        raise UserError("--task is required (a task file or mini:<name>); only --layout igmu and folder work without one")
    if judge and len(judge) > 1:
        raise UserError("--judge takes one spec when evaluating a task")
    t = load_task(task)
    if n is not None:
        if n < 1:
            raise UserError(f"-n must be at least 1, got {n}")
        t.images_per_prompt = n
    if attack_prompts is not None:
        if attack_prompts < 0:
            raise UserError(f"--attack-prompts must be >= 0, got {attack_prompts}")
        t.attack.prompts = attack_prompts
    cfg = EvalConfig(aspects=check_aspects([a.strip() for a in aspects.split(",") if a.strip()]),
                     judge=judge[0] if judge else None, carrier_judge=carrier_judge, clip=clip, features=features,
                     perceptual=perceptual, fid_weights=str(fid_weights) if fid_weights else None,
                     lpips_weights=str(lpips_weights) if lpips_weights else None, lpips_net=lpips_net,
                     settings=GenSettings(steps=steps or DEFAULT_STEPS,
                                          guidance=DEFAULT_GUIDANCE if guidance is None else guidance), seed=seed)
    cfg.settings.validate()
    sources = None
    if images is not None:  # layout igmu-task
        from .evaluation.layout import TaskLayout
        from .tasks.task import task_from_dict

        if unlearned:
            raise UserError("give --unlearned (generate and score) or --images (score existing images), not both")
        if not method:
            raise UserError("--layout igmu-task needs --method: the method folder to score (e.g. --method esd)")
        lay = TaskLayout(images, t.name, method, original_method)
        t = task_from_dict({**t.model_dump(exclude={"prompts", "prompts_file"}), "prompts": lay.task_prompts(t)},
                           f"task {t.name} with the layout's prompts")
        sources = {"original": lay.source("original", seed), "unlearned": lay.source("unlearned", seed),
                   "seeds": lay.seeds(seed)}
        original, unlearned = f"{images}/{original_method}", f"{images}/{method}"
    elif not unlearned:
        raise UserError("give --unlearned ARTIFACT_OR_MODEL (or --images DIR for existing images)")

    res = run_eval(original, unlearned, t, cfg, Cache(cache), progress, sources)
    path = write_results(res, out)
    typer.echo(summary_markdown(res))
    typer.echo(f"results: {path / 'results.json'}")


@app.command("metrics")
@handles_errors
def metrics_list():
    """List the metric networks (FID/KID features, CLIP score, perceptual distance) with their cards."""
    import json as _json

    from .evaluation.registry import KINDS, OPTION, entries, worlds

    for kind, what in KINDS.items():
        typer.echo(f"{what} ({OPTION[kind]}):")
        for e in entries(kind):
            typer.echo(f"  {e.name}{':PATH' if e.card.get('arg') == 'path' else ''}: "
                       f"{_json.dumps({k: v for k, v in e.card.items() if k not in ('name', 'kind', 'arg')})}")
    for w in worlds():
        typer.echo(f"world {w.name!r} (defaults for its own images): {_json.dumps(w.defaults)}")


@judge_app.command("list")
@handles_errors
def judge_list(spec: Optional[List[str]] = typer.Argument(None, help="Judge specs to show (default: nudenet and every plug-in judge that needs no path).")):
    """Show judges' cards: what they detect, version, threshold, validated accuracy."""
    import json as _json

    from .evaluation.judges import REGISTRY, _load_optional, get_judge

    _load_optional()
    path_judges = ("clip", "clip-person", "clip-head")
    for s in spec or ["nudenet"] + sorted(k for k in REGISTRY if k not in path_judges + ("nudenet",)):
        try:
            card = get_judge(s).card
        except UserError as e:
            card = {"unavailable": str(e)}
        typer.echo(f"{s}: {_json.dumps(card, default=str)}")


@judge_app.command("train")
@handles_errors
def judge_train(images: Path = typer.Option(..., "--images", help="Image folder: DIR/<class>/*.png, or IGMU's Training_images_demo/<Concept> (train/<class>/ and test/<class>/: the card's accuracy is on test/)."),
                out: Path = typer.Option(..., "--out", "-o", help="Judge folder to write (use it as clip-head:OUT)."),
                clip: Optional[str] = typer.Option(None, "--clip", help="CLIP image tower: clip:PATH (a local CLIP folder) or a plug-in's (mini-clip, for the mini world's 32x32 images)."),
                val_fraction: float = typer.Option(0.2, "--val-fraction"), seed: int = typer.Option(0, "--seed")):
    """Train an IGMU-style judge: a linear head on CLIP image embeddings, validated on a held-out split."""
    from .evaluation.clip_judge import train_head

    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    path = train_head(images, out, clip=clip, val_fraction=val_fraction, seed=seed)
    import json as _json

    card = _json.loads((Path(path) / "card.json").read_text())
    typer.echo(f"wrote judge {path}: held-out accuracy {card.get('accuracy'):.3f} on {card.get('n')} images "
               f"({'the layout test/ split' if card.get('split') == 'layout' else 'a held-out split'}); "
               f"use it as --judge clip-head:{path}")


@app.command()
@handles_errors
def bench(config: Path = typer.Option(..., "--config", "-c", help="Bench YAML: methods, tasks, seeds, aspects."),
          out: Path = typer.Option(..., "--out", "-o", help="Bench folder (rerun with the same folder to resume)."),
          backend: str = typer.Option("local", "--backend", help="local or ray."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start one here)."),
          parallel: Optional[int] = typer.Option(None, "--parallel", help="Local backend: cells run at once, each in "
                                                 "its own process (default: the cores available / resources.cpus)."),
          threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads of each cell (default: the cores "
                                                "available / the parallel cells; Ray: resources.cpus).")):
    """Run methods x tasks x seeds (erase, generate, evaluate); resumable, every cell cached."""
    from .bench.runner import run_bench

    if backend not in ("local", "ray"):
        raise UserError(f"unknown --backend {backend!r}; backends: local, ray")
    if address and backend != "ray":
        raise UserError("--address is for --backend ray")
    if backend == "ray":
        from .bench.ray_backend import check_ray

        check_ray(address)
    if parallel is not None and backend != "local":
        raise UserError("--parallel is for --backend local (Ray places cells by resources.cpus)")
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    from .utils.threads import check_threads

    check_threads(threads)
    res = run_bench(config, out, backend, address, echo=lambda m: typer.echo(m, err=True), parallel=parallel,
                    threads=threads)
    typer.echo(f"bench done: {res['cells']} cells ({res['ran']} run now) in {res['seconds']} s; "
               f"report: igmu report {res['out']}")


@app.command()
@handles_errors
def report(bench_dir: Path = typer.Argument(..., help="Bench folder written by igmu bench."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: the bench folder).")):
    """Write report.html (self-contained), leaderboard.md and leaderboard.csv for a bench folder."""
    from .report.bench_report import write_report

    paths = write_report(bench_dir, out)
    for name, p in paths.items():
        typer.echo(f"{name}: {p}")


@app.command()
@handles_errors
def plan(target: List[str] = typer.Option(..., "--target", "-t", help="Concept to erase (repeat for several)."),
         kind: Optional[str] = typer.Option(None, "--kind", help="object, style, identity, unsafe, attribute, instance (default: inferred)."),
         scope: str = typer.Option("single", "--scope", help="single, many or sequential."),
         trigger: Optional[str] = typer.Option(None, "--trigger", help="Comma-separated: explicit, implicit, cross-lingual."),
         anchor: Optional[str] = typer.Option(None, "--anchor", help="Concept to map the target onto."),
         model: str = typer.Option("mini", "--model", "-m", help="'mini' (prompts from the renderer) or any other model (sd, ...)."),
         prompts: Optional[Path] = typer.Option(None, "--prompts", help="Real models: an I2P-style CSV (a 'prompt' column; with 'categories', the concept's I2P category) or a text file; its prompts become forget.explicit."),
         clip: Optional[str] = typer.Option(None, "--clip", help="Real models: a local CLIP (clip:PATH) written into the task's CLIP judges (else igmu evaluate --clip gives it)."),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="Task YAML to write (default: print it).")):
    """CatIGMU: place an erasure request in the taxonomy and write a task YAML with its guidance."""
    from .tasks.planner import plan as make_plan, plan_text, write_plan

    task, guidance = make_plan(target[0], kind=kind, scope=scope, triggers=trigger, model=model,
                               extra_targets=target[1:] or None, anchor=anchor, prompts_file=prompts, clip=clip)
    if out is None:
        typer.echo(plan_text(task, guidance))
    else:
        typer.echo(f"wrote task {write_plan(task, guidance, out)}; evaluate with: igmu evaluate --task {out} ...")


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
