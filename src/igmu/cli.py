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
from typer._click import exceptions as _cx  # typer 0.29 (pinned) vendors click: its parser raises these
from typer.core import TyperGroup

from .errors import UserError


class _OneLineErrors(TyperGroup):
    """Usage mistakes found by the parser (an unknown option, a value of the wrong type, a missing argument) end
    like every other user mistake: one "error: ..." line on stderr and exit code 2 (click would print a usage
    block, and typer a boxed panel). A bare group (`igmu`, `igmu world`) prints its help and exits 0."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except _cx.NoArgsIsHelpError as e:
            if not standalone_mode:
                raise
            typer.echo(e.format_message())
            sys.exit(0)
        except _cx.ClickException as e:
            if not standalone_mode:
                raise
            ctx = getattr(e, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(2)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("error: aborted", err=True)
            sys.exit(2)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
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
    """One line, whatever the message holds (a path with a newline in its name is shown escaped)."""
    msg = str(msg).strip().replace("\r", "\\r").replace("\n", "\\n")
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
        except (RuntimeError, MemoryError) as e:  # out of memory, a dtype an op lacks: one line, no traceback
            from .utils.device import hardware_error

            ue = hardware_error(e, f"igmu {fn.__name__.replace('_', ' ')}")
            if ue is None:
                raise
            _fail(str(ue))
    if not own_threads:
        sig = inspect.signature(fn, eval_str=True)
        opt = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int],
                                default=typer.Option(None, "--threads", help=THREADS_HELP))
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), opt])
        wrapper.__annotations__ = {**typing.get_type_hints(fn), "threads": Optional[int]}
    return wrapper


def _device_opt():
    return typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")


def _dtype_opt():
    return typer.Option("auto", "--dtype", help="auto (float32 on CPU; bfloat16, else float16, on a GPU), float32, "
                                                "float16 or bfloat16: the dtype the model is loaded and runs in.")


def _progress(desc: str):
    """A progress factory (total -> advance(k, **info)): a rich bar on a terminal (or IGMU_PROGRESS=1), plain
    periodic lines on stderr otherwise, so that logs and CI show long work (IGMU_PROGRESS=0: silent)."""
    def factory(total: int):
        mode = os.environ.get("IGMU_PROGRESS", "")
        if mode == "0":
            return lambda k=1, **info: None
        if mode != "1" and not sys.stderr.isatty():
            return _plain_progress(desc, total, float(os.environ.get("IGMU_PROGRESS_EVERY", "10")))
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TimeRemainingColumn(), transient=False)
        p.start()
        task = p.add_task(desc, total=total)

        def advance(k: int = 1, **info):
            p.update(task, advance=k, description=desc + _info(info))
            if p.tasks[0].completed >= total:
                p.stop()
        return advance
    return factory


def _info(info: dict) -> str:
    return "".join(f" {a}={b:.4g}" if isinstance(b, (int, float)) else f" {a}={b}" for a, b in info.items())


def _plain_progress(desc: str, total: int, every: float):
    """Plain lines: one every `every` seconds while work goes on (the first after `every` seconds, so quick work
    prints nothing), and one at the end if any was printed."""
    import time

    t0 = last = time.monotonic()
    done, printed = 0, False

    def advance(k: int = 1, **info):
        nonlocal done, last, printed
        done += k
        now = time.monotonic()
        if now - last >= every or (printed and done >= total):
            el = now - t0
            left = el / done * (total - done) if done else 0.0
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            typer.echo(f"{desc}: {done}/{total}{pct}, {_secs(el)} elapsed, about {_secs(left)} left{_info(info)}",
                       err=True)
            last, printed = now, True
    return advance


def _secs(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


@app.command()
@handles_errors
def generate(
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="File of prompts: one per line, or DataIGM JSON."),
    model: str = typer.Option("mini", "--model", "-m", help="'mini', a local diffusers pipeline folder, or a hub id."),
    n: int = typer.Option(8, "-n", help="Images per prompt (1-10000)."),
    seed: int = typer.Option(0, "--seed", help="Image j of each prompt uses seed+j (0 to 2**63-1)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (1-1000; default 20)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (0-100; default 5.0)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt"),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per UNet batch (1-4096; default: chosen to "
                                   "fit, at most 64). Part of an image's identity: other batch sizes may round "
                                   "differently."),
    force: bool = typer.Option(False, "--force", help="With an artifact as --model: apply it even to a base whose "
                               "fingerprint differs from the one it was made from (warns)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (PNGs + generations.jsonl)."),
    device: str = _device_opt(),
    dtype: str = _dtype_opt(),
):
    """Generate seeded images; writes PNGs and a JSONL of (prompt, seed, settings, file)."""
    from .generate import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenSettings, read_prompt_file, run_generate
    from .utils.device import Runtime

    if prompt and prompts:
        raise UserError("give --prompt or --prompts, not both")
    plist = list(prompt or []) if not prompts else read_prompt_file(prompts)
    if not plist:
        raise UserError("no prompt given; use --prompt \"...\" or --prompts FILE")
    s = GenSettings(steps=DEFAULT_STEPS if steps is None else steps,
                    guidance=DEFAULT_GUIDANCE if guidance is None else guidance, negative_prompt=negative_prompt)
    runtime = Runtime.resolve(device, dtype)
    res = run_generate(model, plist, n, seed, s, out, batch_size, _progress("generating"), runtime, force=force)
    typer.echo(f"wrote {len(plist) * n} images and generations.jsonl to {res}")


@app.command()
@handles_errors
def methods(name: Optional[str] = typer.Argument(None, help="A method: show its options, defaults and bounds.")):
    """List the unlearning methods (mechanism, what they change, the architectures they run on, source), or one
    method's options with their defaults and the bounds `--set` must respect."""
    from rich.console import Console
    from rich.table import Table

    from .methods import REGISTRY, get_method
    from .methods.base import option_table
    from .methods.support import COLUMNS, cell

    if name is not None:
        m = get_method(name)
        t = Table("option", "type", "default", "bounds", title=f"{m.name}: {m.summary}")
        for row in option_table(m.Config):
            t.add_row(*row)
        Console(width=200).print(t)
        typer.echo(f"source: {m.source}\nset an option with: igmu erase --method {m.name} --set OPTION=VALUE "
                   "(or --config FILE.yaml); defaults and their citations: docs/methods.md")
        return
    t = Table("method", "mechanism", "changes", "multi-concept", "architectures", "source")
    for n in sorted(REGISTRY):
        m = REGISTRY[n]
        runs = [col for col, fam in COLUMNS.items() if cell(n, fam)[0] == "yes"]
        t.add_row(n, m.summary, m.changes, "yes" if m.multi_concept else "no", ", ".join(runs), m.source)
    Console(width=200).print(t)
    typer.echo("options of one method, with their bounds: igmu methods NAME")


@app.command()
@handles_errors
def erase(
    method: str = typer.Option(..., "--method", help="Method name (see: igmu methods)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Concept to erase (repeatable)."),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="Concept to map the target onto."),
    preserve: Optional[List[str]] = typer.Option(None, "--preserve", help="Concept to keep (repeatable)."),
    model: str = typer.Option("mini", "--model", "-m"),
    config: Optional[str] = typer.Option(None, "--config", help="YAML of method options."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override one option: key=value (repeatable); "
                                             "options, defaults and bounds: igmu methods NAME."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A preset file for this model (igmu calibrate; "
                                         "e.g. presets/mini.yaml), or 'published' (the default: the method's "
                                         "published defaults). --config and --set override it."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact folder to write."),
    device: str = _device_opt(),
    dtype: str = _dtype_opt(),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Fine-tuning methods: recompute activations in backward "
                                                     "(less memory, more time)."),
):
    """Erase concept(s) from a model; writes an artifact (changed weights + manifest)."""
    from .artifacts import load_artifact
    from .erase import run_erase
    from .utils.device import Runtime
    from .utils.validate import check_concepts

    if not target:
        raise UserError("no --target given; name the concept to erase, e.g. --target \"circle\"")
    targets, anchor, keep = check_concepts(target, anchor, preserve)
    runtime = Runtime.resolve(device, dtype, gradient_checkpointing)
    res = run_erase(model, method, targets, anchor, keep, config, list(set_ or []), out,
                    _progress(f"erasing ({method})"), runtime, preset=preset)
    cost = load_artifact(res)[0]["cost"]
    typer.echo(f"wrote artifact {res} ({cost['params_changed']} parameters changed, {cost['erase_seconds']:.2f} s)")


@app.command("export")
@handles_errors
def export_cmd_top(artifact: Path = typer.Argument(..., help="Artifact folder from igmu erase."),
                   out: Path = typer.Option(..., "--out", "-o", help="Pipeline folder to write (new or empty)."),
                   base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the manifest's)."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace a pipeline that igmu export "
                                                  "wrote at --out (any other non-empty folder is never replaced)."),
                   force: bool = typer.Option(False, "--force", help="Apply the artifact even to a base whose "
                                              "fingerprint differs from the one it was made from (warns).")):
    """Write a merged diffusers pipeline folder (base model + artifact) that plain diffusers loads."""
    from .artifacts import export_merged

    typer.echo(f"merged pipeline written to {export_merged(artifact, out, base, overwrite, force)}")


@app.command()
@handles_errors
def attacks(budgets: bool = typer.Option(False, "--budgets", help="Print every budget preset's numbers instead.")):
    """List the attacks: mechanism, access needed, what they need, cost per prompt at each budget."""
    import json as _json

    from rich.console import Console
    from rich.table import Table

    from .evaluation.attack_run import attacks_table

    if budgets:
        for r in attacks_table():
            typer.echo(f"{r['name']} ({r['source']}):")
            for b, v in r["budgets"].items():
                typer.echo(f"  {b}: {_json.dumps(v)}")
        return
    t = Table("attack", "mechanism", "access", "needs original", "target in prompt",
              "cost per prompt: official / fast / tiny", show_lines=True)
    for r in attacks_table():
        t.add_row(f"{r['name']}\n{r['title']}", r["mechanism"], r["access"], "yes" if r["needs_original"] else "no",
                  "yes" if r["needs_target_in_prompt"] else "no",
                  "\n".join(f"{b}: {c}" for b, c in r["cost"].items()))
    Console(width=200).print(t)
    typer.echo("budget numbers: igmu attacks --budgets; sources, differences and measured costs: docs/robustness.md")


@app.command()
@handles_errors
def attack(
    attack_name: str = typer.Option(..., "--attack", help="Attack name (see: igmu attacks)."),
    unlearned: str = typer.Option(..., "--unlearned", help="Artifact folder from igmu erase, or a pipeline folder."),
    original: Optional[str] = typer.Option(None, "--original", help="The model before unlearning ('mini', a folder or hub id); "
                                           "needed by the attacks that use it."),
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt to attack (repeatable)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="File of prompts: one per line, or DataIGM JSON."),
    target: str = typer.Option(..., "--target", "-t", help="The erased concept, as the judge names it."),
    budget: str = typer.Option("fast", "--budget", help="official, fast or tiny."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json, images/ and embeddings/."),
    judge: str = typer.Option("mini", "--judge", help="Judge spec: mini, mini-clip, nudenet, clip:PATH, clip-head:DIR."),
    context: Optional[str] = typer.Option(None, "--context", help="Comma-separated concepts a zero-shot judge weighs "
                                          "the target against."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Concept kind (object, style, identity, unsafe, ...): "
                                       "budgets that depend on it (UnlearnDiffAtk: 5 tokens for unsafe)."),
    seed: int = typer.Option(0, "--seed", help="Image seed of every prompt (and of the attack's randomness)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps of the checks (default 20)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale of the checks (default 5.0)."),
):
    """Attack an unlearned model: can the erased target be brought back? Writes results.json and images."""
    from .evaluation.attack_run import run_attack_command, summary_line
    from .generate import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenSettings, read_prompt_file
    from .tasks.task import KINDS

    if prompt and prompts:
        raise UserError("give --prompt or --prompts, not both")
    plist = list(prompt or []) if not prompts else read_prompt_file(prompts)
    if not plist:
        raise UserError("no prompt given; use --prompt \"...\" or --prompts FILE")
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown --kind {kind!r}; kinds: {', '.join(KINDS)}")
    s = GenSettings(steps=steps or DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE if guidance is None else guidance)
    doc = run_attack_command(attack_name, unlearned, original, target, plist, budget, out, judge, seed, s, kind,
                             (context or "").split(","), _progress(f"attack {attack_name} ({budget})")(len(plist)))
    typer.echo(summary_line(doc))
    typer.echo(f"results: {out / 'results.json'}")


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
    n: Optional[int] = typer.Option(None, "-n", help="Images per prompt (1-10000; default: the task's)."),
    attack_prompts: Optional[int] = typer.Option(None, "--attack-prompts", help="Prompts each attack attacks (0-10000; default: the task's; 0: none)."),
    attacks_opt: Optional[str] = typer.Option(None, "--attacks", help="Attacks of the robustness aspect, name:budget, "
                                              "comma-separated (default: the task's, unlearndiffatk:fast); 'none' for none."),
    seed: int = typer.Option(0, "--seed", help="Image j of a prompt uses seed+j (0 to 2**63-1)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (1-1000; default 20)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (0-100; default 5.0)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache folder (default $IGMU_CACHE or ~/.cache/igmu)."),
    device: str = _device_opt(),
    dtype: str = _dtype_opt(),
):
    """Evaluate an unlearned model on a task (forgetting, preservation, quality, alignment, robustness, cost), or
    score a tree of pre-generated images (--images)."""
    from .evaluation.cache import Cache
    from .evaluation.evaluate import EvalConfig, check_aspects, eval_seed_span, evaluate as run_eval, write_results
    from .evaluation.summary import summary_markdown
    from .generate import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_IMAGES_PER_PROMPT, GenSettings
    from .tasks import load_task
    from .utils.io import check_out
    from .utils.validate import check_int, check_seed

    layouts = ("igmu", "igmu-task", "folder")
    if images is not None and layout not in layouts:
        raise UserError(f"unknown --layout {layout!r}; layouts: {', '.join(layouts)}")
    if lpips_net not in ("alex", "vgg"):
        raise UserError(f"--lpips-net must be alex or vgg, got {lpips_net!r}")
    check_seed(seed)
    check_out(out, lambda o: (o / "results.json").is_file(), "igmu evaluation folder")

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
    from .utils.device import Runtime

    runtime = Runtime.resolve(device, dtype)
    t = load_task(task)
    if n is not None:
        t.images_per_prompt = check_int(n, "-n", 1, MAX_IMAGES_PER_PROMPT)
    if attack_prompts is not None:
        t.attack.prompts = check_int(attack_prompts, "--attack-prompts", 0, 10_000)
    atk = None
    if attacks_opt is not None:
        from .attacks.base import parse_attack_specs

        atk = [] if attacks_opt.strip().lower() == "none" else [f"{a}:{b}" for a, b in parse_attack_specs(attacks_opt)]
    cfg = EvalConfig(aspects=check_aspects([a.strip() for a in aspects.split(",") if a.strip()]),
                     judge=judge[0] if judge else None, carrier_judge=carrier_judge, clip=clip, features=features,
                     perceptual=perceptual, fid_weights=str(fid_weights) if fid_weights else None,
                     lpips_weights=str(lpips_weights) if lpips_weights else None, lpips_net=lpips_net, attacks=atk,
                     settings=GenSettings(steps=DEFAULT_STEPS if steps is None else steps,
                                          guidance=DEFAULT_GUIDANCE if guidance is None else guidance), seed=seed,
                     runtime=runtime)
    cfg.settings.validate()
    check_seed(seed, "--seed", eval_seed_span(t))
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
    else:
        from .artifacts import check_model_spec

        for spec in (original, unlearned):  # a damaged artifact fails now, not after generating the original's images
            check_model_spec(spec)

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
                val_fraction: float = typer.Option(0.2, "--val-fraction", help="Held-out share (0.01-0.99)."),
                seed: int = typer.Option(0, "--seed", help="0 to 2**63-1.")):
    """Train an IGMU-style judge: a linear head on CLIP image embeddings, validated on a held-out split."""
    from .evaluation.clip_judge import train_head
    from .utils.io import check_out
    from .utils.validate import check_float, check_seed

    if images.exists() and not images.is_dir():
        raise UserError(f"--images {images} is a file; give a folder DIR/<class>/*.png")
    check_float(val_fraction, "--val-fraction", 0.01, 0.99)
    check_seed(seed)
    check_out(out, lambda o: (o / "card.json").is_file(), "igmu judge folder")
    path = train_head(images, out, clip=clip, val_fraction=val_fraction, seed=seed)
    import json as _json

    card = _json.loads((Path(path) / "card.json").read_text(encoding="utf-8"))
    typer.echo(f"wrote judge {path}: held-out accuracy {card.get('accuracy'):.3f} on {card.get('n')} images "
               f"({'the layout test/ split' if card.get('split') == 'layout' else 'a held-out split'}); "
               f"use it as --judge clip-head:{path}")


@app.command("build-model")
@handles_errors
def build_model(kind: str = typer.Argument(..., help="sd15 (SD 1.5's architecture, 512 px) or sd21 (SD 2.1's, 768 px, v-prediction)."),
                out: Path = typer.Option(..., "--out", "-o", help="Pipeline folder to write."),
                dtype: str = typer.Option("float16", "--dtype", help="float16 (as checkpoints are distributed), bfloat16 or float32."),
                seed: int = typer.Option(0, "--seed"),
                latent: Optional[int] = typer.Option(None, "--latent", help="Default latent side (the real one if omitted: 64 / 96).")):
    """Build a Stable-Diffusion-sized pipeline with RANDOM weights from the configs in the repo (real UNet, text
    encoder and VAE shapes, CLIP's real tokenizer): for measuring methods at scale without any download."""
    from .models.scale import KINDS, save_scale_pipeline
    from .utils.device import DTYPES
    from .utils.io import check_writable_dir

    if kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use float16, bfloat16 or float32")
    if latent is not None and not (4 <= latent <= 256 and latent % 8 == 0):
        raise UserError(f"--latent must be a multiple of 8 between 8 and 256, got {latent}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    check_writable_dir(out.parent)
    res = save_scale_pipeline(kind, out, DTYPES[dtype], seed, latent)
    typer.echo(f"wrote a random-weight {kind}-sized pipeline ({dtype}) to {res}")


@app.command()
@handles_errors
def bench(config: Path = typer.Option(..., "--config", "-c", help="Bench YAML: methods, tasks, seeds, aspects."),
          out: Path = typer.Option(..., "--out", "-o", help="Bench folder (rerun with the same folder to resume)."),
          backend: str = typer.Option("local", "--backend", help="local or ray."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start one here)."),
          parallel: Optional[int] = typer.Option(None, "--parallel", help="Local backend: cells run at once, each in "
                                                 "its own process (default: the cores available / resources.cpus)."),
          threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads of each cell (default: the cores "
                                                "available / the parallel cells; Ray: resources.cpus)."),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config field: KEY=VALUE "
                                                   "(repeatable; dotted KEY, e.g. model=PATH, "
                                                   "evaluation.images_per_prompt=1, methods.esd.set.iterations=2; "
                                                   "VALUE read as YAML).")):
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
                    threads=threads, overrides=set_)
    typer.echo(f"bench done: {res['cells']} cells ({res['ran']} run now) in {res['seconds']} s; "
               f"report: igmu report {res['out']}")


@app.command()
@handles_errors
def calibrate(model: str = typer.Option("mini", "--model", "-m", help="The model to calibrate: 'mini' or a local pipeline folder."),
              methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated method names or labels of the --bench-config's methods (default: the bench config's methods, else every method)."),
              concepts: str = typer.Option(..., "--concepts", help="Comma-separated calibration concepts (e.g. square,dotted): planned with the model's world, or task specs (mini:object-square, a task YAML). Never a test concept."),
              bench_config: Optional[Path] = typer.Option(None, "--bench-config", help="The benchmark the preset is for: its tasks' targets are refused as calibration concepts, its method labels (e.g. esd-u) usable in --methods."),
              out: Path = typer.Option(..., "--out", "-o", help="Preset file to write, e.g. presets/mini.yaml (an existing one of the same model and settings is extended)."),
              budget: str = typer.Option("published", "--budget", help="Compute budget: published (no caps) or small (the mini model on 2 CPU cores; see igmu/bench/calibrate.py)."),
              n: int = typer.Option(1, "-n", help="Images per held-out prompt."),
              max_prompts: Optional[int] = typer.Option(None, "--max-prompts", help="Use only the first N prompts of each prompt set (quick checks; the preset records it)."),
              seed: int = typer.Option(0, "--seed"),
              clip: Optional[str] = typer.Option(None, "--clip", help="Real models: a local CLIP (clip:PATH) for the planner's judges."),
              work: Optional[Path] = typer.Option(None, "--work", help="Work folder: per-rung results and images (default: the igmu cache); rerun to resume."),
              parallel: int = typer.Option(1, "--parallel", help="Methods calibrated at once, each in its own process (the results are those of one at a time at the same --threads)."),
              threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (of each method's process with --parallel; default: the cores available / --parallel).")):
    """Choose each method's strength for a model by one fixed rule (a ladder of budgets, forgetting <= 20% on
    held-out prompts of calibration concepts) and write a preset file for igmu erase --preset and bench configs."""
    from .bench.calibrate import CalibrationSetup, entries_from, run_calibration

    from .utils.threads import check_threads, set_threads

    if max_prompts is not None and max_prompts < 1:
        raise UserError(f"--max-prompts must be at least 1, got {max_prompts}")
    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    check_threads(threads)
    if parallel == 1:
        set_threads(threads)
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} is a folder; give a preset file path such as presets/mini.yaml")
    names = [m.strip() for m in (methods or "").split(",") if m.strip()]
    setup = CalibrationSetup(model=model, entries=entries_from(names, str(bench_config) if bench_config else None),
                             concepts=[c.strip() for c in concepts.split(",") if c.strip()], budget=budget,
                             images_per_prompt=n, max_prompts=max_prompts, seed=seed, clip=clip,
                             bench_config=str(bench_config) if bench_config else None, work=work)
    res = run_calibration(setup, out, echo=lambda m: typer.echo(m, err=True), progress=_progress, parallel=parallel,
                          threads=threads)
    typer.echo(f"wrote preset {res['out']} ({res['methods']} methods); use it with: igmu erase --preset {res['out']} "
               f"or a bench config's preset: key")


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
    from .utils.validate import check_concepts

    check_concepts(target, anchor, [])
    task, guidance = make_plan(target[0], kind=kind, scope=scope, triggers=trigger, model=model,
                               extra_targets=target[1:] or None, anchor=anchor, prompts_file=prompts, clip=clip)
    if out is None:
        typer.echo(plan_text(task, guidance))
    else:
        typer.echo(f"wrote task {write_plan(task, guidance, out)}; evaluate with: igmu evaluate --task {out} ...")


@world.command("build-data")
@handles_errors
def build_data_cmd(out: Path = typer.Option(..., "--out", "-o"), seed: int = typer.Option(0, "--seed", help="0 to 2**63-1."),
                   n_train: int = typer.Option(40000, "--n-train", help="1-10000000."),
                   n_test: int = typer.Option(4000, "--n-test", help="1-10000000.")):
    """Write DataIGM-mini: labeled renders, captions, splits and forget/retain prompt sets."""
    from .utils.io import check_out
    from .utils.validate import check_int, check_seed
    from .world.data import build_data

    check_int(n_train, "--n-train", 1, 10_000_000)
    check_int(n_test, "--n-test", 1, 10_000_000)
    check_seed(seed, "--seed", 1000)  # the splits draw from seed + a small offset (world.data.SPLIT_SEED_OFFSET)
    check_out(out, lambda o: (o / "info.json").is_file() and (o / "train").is_dir(), "igmu DataIGM-mini folder")
    adv = _progress("rendering")(n_train + n_test)
    build_data(out, seed, n_train, n_test, progress=adv)
    typer.echo(f"wrote DataIGM-mini ({n_train} train, {n_test} test) to {out}")


@world.command("build-tokenizer")
@handles_errors
def build_tokenizer_cmd(out: Optional[Path] = typer.Option(None, "--out"), seed: int = typer.Option(0, "--seed", help="0 to 2**63-1.")):
    """Learn the world's CLIP-format BPE tokenizer (default: into the package assets)."""
    from .models.tokenizer import TOKENIZER_DIR
    from .utils.io import check_out
    from .utils.validate import check_seed
    from .world.tokenizer import build_tokenizer

    check_seed(seed)
    check_out(out or TOKENIZER_DIR, lambda o: (o / "vocab.json").is_file() and (o / "merges.txt").is_file(),
              "igmu tokenizer folder")
    tok = build_tokenizer(out or TOKENIZER_DIR, seed)
    typer.echo(f"tokenizer with {len(tok)} tokens written to {out or TOKENIZER_DIR}")


STAGES = ("vae", "unet", "detector", "clip")


@world.command("train")
@handles_errors
def train_cmd(stage: str = typer.Argument(..., help="vae | unet | detector | clip"),
              data: Path = typer.Option(Path("data/dataigm-mini"), "--data"),
              work: Path = typer.Option(Path("runs/mini"), "--work", help="Checkpoints (vae, unet); resumable."),
              steps: Optional[int] = typer.Option(None, "--steps", help="1-10000000 (default: the stage's)."),
              seed: int = typer.Option(0, "--seed", help="0 to 2**63-1."),
              batch: Optional[int] = typer.Option(None, "--batch", help="1-65536 (default: the stage's)."),
              lr: Optional[float] = typer.Option(None, "--lr", help="Finite, in (0, 1] (default: the stage's)."),
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
    from .utils.validate import check_float, check_int, check_seed

    for name, v, hi in (("--steps", steps, 10_000_000), ("--batch", batch, 65_536), ("--stop-at", stop_at, 10_000_000)):
        if v is not None:
            check_int(v, name, 1, hi)
    if lr is not None:
        check_float(lr, "--lr", 0.0, 1.0, lo_open=True)
    check_seed(seed)
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
    from .utils.io import check_out
    from .world.train import export_pipeline

    if not (work / "unet_ckpt.safetensors").is_file():
        raise UserError(f"no trained UNet in {work}; run: igmu world train unet --work {work}")
    check_out(out or MINI_DIR, lambda o: (o / "igmu_training.json").is_file(), "igmu-trained pipeline folder")
    res = export_pipeline(work, out or MINI_DIR)
    typer.echo(f"pipeline written to {res}")


@world.command("render")
@handles_errors
def render_cmd(out: Path = typer.Option(..., "--out"), n: int = typer.Option(64, "-n", help="1-4096."),
               seed: int = typer.Option(0, "--seed", help="0 to 2**63-1.")):
    """Render a grid of random scenes with their canonical captions (a quick look at the world)."""
    import json

    import numpy as np
    from PIL import Image

    from .utils.io import atomic_path
    from .world.captions import canonical
    from .world.render import render
    from .world.scenes import sample_scene
    from .utils.validate import check_int, check_seed

    check_int(n, "-n", 1, 4096)
    check_seed(seed)
    if out.exists() and not (out.is_file() and out.with_suffix(".json").is_file()):
        raise UserError(f"--out {out} exists and is not a grid written by igmu world render; choose a new path")
    if out.with_suffix(".json").is_dir():
        raise UserError(f"{out.with_suffix('.json')} is a folder; choose another --out")
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
