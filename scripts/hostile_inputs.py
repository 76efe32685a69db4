"""Hostile and careless input on every igmu command: how many cases end cleanly, and how many do not.

    python scripts/hostile_inputs.py            # every case; prints the counts, exit 1 on any failure
    python scripts/hostile_inputs.py --list     # also one line per case
    python scripts/hostile_inputs.py --json     # the counts as JSON

A case is one `igmu ARGS` command line, run IN PROCESS through typer's CliRunner (a subprocess would cost seconds of
torch import per case) under a 30-second alarm. Cases are written by hand (one per mistake: binary and Latin-1
files, deep JSON, YAML bombs and Python tags, pickles, truncated safetensors, folders and files in the wrong
place, seeds past 2**63-1, non-finite and out-of-range numbers, hostile results for `igmu report`, ...) and
generated (a seeded random mix of options and hostile values per command). A case passes when it ends

- in exit 0 with valid output: every JSON/JSONL file it wrote parses as strict JSON (no NaN/Infinity; a
  diffusers/transformers *config.json inside a pipeline folder is only parsed: diffusers itself writes the
  scheduler's default "lambda_min_clipped": -Infinity),
  every safetensors file loads with finite tensors, every PNG decodes; or
- in exit 2 with exactly one line on stderr, starting "error: ", and no traceback;

within the time bound. Counted separately: tracebacks, hangs, exit-0 runs with non-finite output, anything else
(another exit code, several lines), and pickles or YAML Python tags that were executed (each would create a
marker file). The test suite runs every case (tests/test_hostile.py).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TIMEOUT_S = 30
SEED_MAX = 2 ** 63 - 1


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in igmu swallows it."""


@dataclass
class Case:
    name: str
    args: list[str]
    outs: list[str] = field(default_factory=list)  # paths whose content must be valid after exit 0


@dataclass
class Outcome:
    case: Case
    kind: str  # error (exit 2, one line) | ok (exit 0, valid) | traceback | hang | nonfinite | other
    seconds: float
    detail: str = ""


# --- the corpus of hostile files -------------------------------------------------------------------------------

class _Marker:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def build_corpus(root: Path) -> dict[str, Path]:
    """Hostile files, one per kind, under root/corpus."""
    c = root / "corpus"
    c.mkdir(parents=True)
    marker = str(root / "PICKLE_EXECUTED")
    ymarker = str(root / "YAML_TAG_EXECUTED")
    f: dict[str, Path] = {}

    def put(name, data: bytes | str):
        p = c / name
        p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        f[name] = p
        return p

    rnd = random.Random(0)
    put("binary.bin", bytes(rnd.randrange(256) for _ in range(4096)))
    put("latin1.txt", "a caf\u00e9 circle\n".encode("latin-1"))
    put("utf16.txt", "a red circle\n".encode("utf-16"))
    put("nul.txt", b"a red circle\x00\n")
    put("empty.txt", b"")
    put("comments.txt", "# only a comment\n\n   \n")
    put("crlf.txt", b"a red circle on a dark background\r\n")
    put("bom.txt", "\ufeffa red circle on a dark background\n")
    put("long-line.txt", "circle " * 30_000)  # 210,000 characters on one line
    put("deep.json", "[" * 100_000 + "]" * 100_000)
    put("deep-obj.json", '{"a":' * 50_000 + "1" + "}" * 50_000)
    put("nan.json", '{"a": NaN, "b": [Infinity]}')
    put("bigint.json", '{"seed": ' + "9" * 5000 + "}")
    put("list.json", '["a", "b"]')
    put("string.json", '"just a string"')
    put("truncated.json", '{"forget": {"explicit": ["a red')
    put("dupkeys.json", '{"a": 1, "a": {"b": 2}}')
    laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    put("laughs.yaml", laughs)
    put("deep.yaml", "[" * 100_000 + "]" * 100_000)
    put("deep-block.yaml", "".join("  " * i + f"k{i}:\n" for i in range(2000)) + "  " * 2000 + "v\n")
    put("pytag.yaml", f"a: !!python/object/apply:builtins.open [{ymarker!r}, w]\n")
    put("pyname.yaml", "a: !!python/name:os.system\n")
    put("unknown-tag.yaml", "a: !mytag 3\n")
    put("alias-undefined.yaml", "a: *nope\n")
    put("multidoc.yaml", "a: 1\n---\nb: 2\n")
    put("inf.yaml", "a: .inf\nb: .nan\n")
    put("tabs.yaml", "a:\n\t- b\n")
    put("list.yaml", "- a\n- b\n")
    put("scalar.yaml", "hello\n")
    put("complex-key.yaml", "? [a, b]\n: c\n")
    put("bigint.yaml", "a: " + "9" * 5000 + "\n")
    put("pickle.pkl", pickle.dumps({"x": _Marker(marker)}))
    put("pickle.json", pickle.dumps({"x": _Marker(marker)}))
    put("pickle.yaml", pickle.dumps({"x": _Marker(marker)}))
    put("weights-trunc.safetensors", _safetensors_bytes(
        {"unet.a.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]}}, b"\0" * 100))
    put("weights-hugeheader.safetensors", struct.pack("<Q", 2 ** 62) + b"{}")
    put("weights-notjson.safetensors", struct.pack("<Q", 8) + b"notjson!")
    put("weights-empty.safetensors", b"")
    big = c / "big.txt"  # sparse: larger than any limit, written in no time
    with open(big, "wb") as fh:
        fh.truncate(17 << 20)
    f["big.txt"] = big
    (c / "folder").mkdir()
    f["folder"] = c / "folder"
    os.mkfifo(c / "fifo")
    f["fifo"] = c / "fifo"
    (c / "loop").symlink_to(c / "loop")
    f["loop"] = c / "loop"
    (c / "dangling").symlink_to(c / "nowhere")
    f["dangling"] = c / "dangling"
    f["missing"] = c / "missing.txt"
    f["newline name"] = put("new\nline.txt", "a red circle\n")
    put("csv-huge-field.csv", "file,prompt\na.png,\"" + "x" * 200_000 + "\"\n")
    put("csv-nul.csv", "file,prompt\na.png,a\x00b\n")
    put("prompts-no-columns.csv", "a,b\n1,2\n")
    return f


# --- cases -----------------------------------------------------------------------------------------------------

TEXT_FILES = ["binary.bin", "latin1.txt", "utf16.txt", "nul.txt", "empty.txt", "comments.txt", "long-line.txt",
              "deep.json", "deep-obj.json", "nan.json", "bigint.json", "truncated.json", "list.json", "string.json",
              "deep.yaml", "pytag.yaml", "pyname.yaml", "pickle.pkl",
              "pickle.json", "big.txt", "folder", "fifo", "loop", "dangling", "missing", "newline name"]
YAML_FILES = ["binary.bin", "latin1.txt", "utf16.txt", "nul.txt", "empty.txt", "deep.json", "deep-obj.json",
              "nan.json", "bigint.json", "truncated.json", "list.json", "string.json", "dupkeys.json", "laughs.yaml",
              "deep.yaml", "deep-block.yaml", "pytag.yaml", "pyname.yaml", "unknown-tag.yaml", "alias-undefined.yaml",
              "multidoc.yaml", "inf.yaml", "tabs.yaml", "list.yaml", "scalar.yaml", "complex-key.yaml", "bigint.yaml",
              "pickle.yaml", "big.txt", "folder", "fifo", "loop", "dangling", "missing"]
BAD_SEEDS = ["-1", str(SEED_MAX + 1), str(2 ** 64 - 1), str(2 ** 70), "abc", "1.5", "", "1e3", "0x10"]
BAD_INTS = ["0", "-1", "abc", "", "1.5", str(2 ** 70), "nan"]
BAD_FLOATS = ["nan", "inf", "-inf", "-1", "1e308", "abc", "", "1e999"]


def _bench_yaml(root: Path, name: str, text: str) -> Path:
    p = root / "bench-configs" / f"{name}.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _task_yaml(root: Path, name: str, text: str) -> Path:
    p = root / "task-files" / f"{name}.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


GOOD_TASK = """version: 1
name: t
category: {kind: object}
targets: [circle]
prompts:
  forget:
    explicit: [a red circle on a dark background]
"""


def written_cases(root: Path, f: dict[str, Path], fixtures: dict[str, Path]) -> list[Case]:
    cases: list[Case] = []
    n = [0]

    def out(kind="o") -> str:
        n[0] += 1
        return str(root / "outs" / f"{kind}{n[0]}")

    def add(name, *args, outs=()):
        cases.append(Case(name, [str(a) for a in args], list(outs)))

    foreign = fixtures["foreign"]
    afile = fixtures["afile"]
    # global
    add("no arguments")
    add("--help", "--help")
    add("unknown command", "bogus")
    add("unknown option", "generate", "--bogus", "1")
    add("methods", "methods")
    add("judge list bogus", "judge", "list", "bogus", "clip:/nonexistent", "clip-head:" + str(f["folder"]))
    # generate: files
    for k in TEXT_FILES + ["crlf.txt", "bom.txt"]:
        o = out()
        add(f"generate --prompts {k}", "generate", "--prompts", f[k], "-n", "1", "--steps", "1", "--out", o,
            outs=[o] if k in ("crlf.txt", "bom.txt") else [])
    # generate: numbers
    for v in BAD_SEEDS:
        add(f"generate --seed {v!r}", "generate", "--prompt", "x", "--seed", v, "--out", out())
    add("generate seed+n-1 past 2**63-1", "generate", "--prompt", "x", "--seed", SEED_MAX, "-n", "2", "--out", out())
    for v in BAD_INTS + ["1001"]:
        add(f"generate --steps {v!r}", "generate", "--prompt", "x", "--steps", v, "--out", out())
    for v in BAD_FLOATS + ["101"]:
        add(f"generate --guidance {v!r}", "generate", "--prompt", "x", "--guidance", v, "--out", out())
    for v in BAD_INTS + ["5000"]:
        add(f"generate --batch-size {v!r}", "generate", "--prompt", "x", "--batch-size", v, "--out", out())
    for v in BAD_INTS + ["10001"]:
        add(f"generate -n {v!r}", "generate", "--prompt", "x", "-n", v, "--out", out())
    for v in ["", "   ", "bogus-model", str(afile), str(f["folder"]), str(fixtures["bad_index"]),
              str(fixtures["deep_index"]), "../../etc", "a/b/c/d"]:
        add(f"generate --model {v!r}", "generate", "--prompt", "x", "--model", v, "--out", out())
    add("generate --prompt ''", "generate", "--prompt", "", "--out", out())
    add("generate --prompt and --prompts", "generate", "--prompt", "x", "--prompts", f["crlf.txt"], "--out", out())
    add("generate --out is a file", "generate", "--prompt", "x", "--out", afile)
    add("generate --out is a foreign folder", "generate", "--prompt", "x", "--out", foreign)
    add("generate --out under a file", "generate", "--prompt", "x", "--out", f"{afile}/sub")
    o = out()
    add("generate valid (1 image, 2 steps)", "generate", "--prompt", "a red circle on a dark background", "-n", "1",
        "--steps", "2", "--out", o, outs=[o])
    # erase
    base = ["erase", "--method", "uce", "--target", "circle"]
    for k in YAML_FILES:
        add(f"erase --config {k}", *base, "--config", f[k], "--out", out())
    for s in ["bogus=1", "noequals", "lamb=.inf", "lamb=.nan", "lamb=-.inf", "lamb=[1, 2]", "lamb={a: 1}",
              "erase_scale=abc", "lamb=" + "[" * 5000 + "]" * 5000,
              "lamb=" + "{a: &a [x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a], "
                        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c], "
                        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d], f: [*e, *e, *e, *e, *e, *e, *e, *e]}",
              "lamb=!!python/object/apply:os.system [echo]", "=1", " = "]:
        add(f"erase --set {s[:40]!r}", *base, "--set", s, "--out", out())
    for m in ["bogus", "", "UCE", "../uce"]:
        add(f"erase --method {m!r}", "erase", "--method", m, "--target", "circle", "--out", out())
    long = " ".join(["circle"] * 300)
    for name, extra in [("no target", ["--method", "uce"]),
                        ("empty target", ["--method", "uce", "--target", ""]),
                        ("blank target", ["--method", "uce", "--target", "   "]),
                        ("300-word target", ["--method", "uce", "--target", long]),
                        ("300-word anchor", ["--method", "uce", "--target", "circle", "--anchor", long]),
                        ("300-word preserve", ["--method", "uce", "--target", "circle", "--preserve", long]),
                        ("anchor == target", ["--method", "uce", "--target", "circle", "--anchor", "circle"]),
                        ("anchor == target (case)", ["--method", "uce", "--target", "circle", "--anchor", "Circle"]),
                        ("preserve == target", ["--method", "uce", "--target", "circle", "--preserve", "circle"]),
                        ("empty preserve", ["--method", "uce", "--target", "circle", "--preserve", ""]),
                        ("target twice", ["--method", "uce", "--target", "circle", "--target", "circle"]),
                        ("control character", ["--method", "uce", "--target", "cir\x07cle"]),
                        ("escape sequence", ["--method", "uce", "--target", "\x1b[31mred"]),
                        ("huge target", ["--method", "uce", "--target", "x" * 5000]),
                        ("one-concept method, two targets", ["--method", "esd", "--target", "circle", "--target",
                                                             "square"])]:
        add(f"erase {name}", "erase", *extra, "--out", out())
    for v in ["", "bogus", str(afile), str(f["folder"]), str(fixtures["bad_index"])]:
        add(f"erase --model {v!r}", *base, "--model", v, "--out", out())
    add("erase --out is a file", *base, "--out", afile)
    add("erase --out is a foreign folder", *base, "--out", foreign)
    add("erase --out under a file", *base, "--out", f"{afile}/sub")
    # export
    art = fixtures["artifact"]
    add("export --out is a foreign folder", "export", art, "--out", foreign)
    add("export --out foreign, --overwrite", "export", art, "--out", foreign, "--overwrite")
    add("export --out is a file", "export", art, "--out", afile)
    add("export --out is a file, --overwrite", "export", art, "--out", afile, "--overwrite")
    add("export --out an earlier export, no --overwrite", "export", art, "--out", fixtures["export"])
    add("export of a non-artifact", "export", f["folder"], "--out", out())
    add("export of a file", "export", afile, "--out", out())
    add("export missing artifact", "export", root / "nope", "--out", out())
    for k in ["binary.bin", "deep.json", "nan.json", "list.json", "string.json", "truncated.json", "pickle.json",
              "empty.txt", "big.txt"]:
        add(f"export manifest {k}", "export", fixtures[f"manifest:{k}"], "--out", out())
    for k in ARTIFACT_VARIANTS:
        add(f"export artifact {k}", "export", fixtures[f"artifact:{k}"], "--out", out())
        add(f"generate --model artifact {k}", "generate", "--model", fixtures[f"artifact:{k}"], "--prompt", "x",
            "-n", "1", "--steps", "1", "--out", out())
        add(f"evaluate --unlearned artifact {k}", "evaluate", "--task", "mini:object-circle", "--unlearned",
            fixtures[f"artifact:{k}"], "--out", out())
    o = out()
    add("export artifact base-hash mismatch --force (warns)", "export", fixtures["artifact:base hash mismatch"],
        "--out", o, "--force", outs=[o])
    for k in ("nan", "pickled text encoder"):
        add(f"generate --model {k} pipeline", "generate", "--model", fixtures[f"pipe:{k}"], "--prompt", "x",
            "--out", out())
        add(f"erase --model {k} pipeline", "erase", "--model", fixtures[f"pipe:{k}"], "--method", "uce",
            "--target", "circle", "--out", out())
    tiny = fixtures["pipe:tiny"]
    for s_ in ["lr=1e308", "lr=1e30", "lr=.inf", "iterations=1000000000", "sample_steps=100000", "seed=-1",
               f"seed={2 ** 64}", "negative_guidance=-1"]:
        add(f"erase esd on a tiny pipeline --set {s_}", "erase", "--model", tiny, "--method", "esd", "--target",
            "circle", "--set", "iterations=3", "--set", "sample_steps=2", "--set", s_, "--out", out())
    add("erase --model an artifact", "erase", "--model", art, "--method", "uce", "--target", "circle", "--out", out())
    # evaluate
    ev = ["evaluate", "--unlearned", str(art)]
    for k in YAML_FILES:
        add(f"evaluate --task {k}", *ev, "--task", f[k], "--out", out())
    for k, text in [
        ("unknown field", GOOD_TASK + "bogus: 1\n"),
        ("version string", GOOD_TASK.replace("version: 1", "version: '1'")),
        ("no explicit prompts", GOOD_TASK.replace("explicit:", "synonym:")),
        ("empty target", GOOD_TASK.replace("[circle]", "['']")),
        ("anchor == target", GOOD_TASK + "anchor: circle\n"),
        ("preserve == target", GOOD_TASK + "preserve: [circle]\n"),
        ("images_per_prompt 0", GOOD_TASK + "images_per_prompt: 0\n"),
        ("images_per_prompt huge", GOOD_TASK + "images_per_prompt: 100000000\n"),
        ("attack lr nan", GOOD_TASK + "attack: {lr: .nan}\n"),
        ("attack steps huge", GOOD_TASK + "attack: {steps: 1000000000}\n"),
        ("prompts a list", GOOD_TASK.replace("prompts:\n  forget:\n    explicit: [a red circle on a dark background]",
                                             "prompts: [a, b]")),
        ("prompt a number", GOOD_TASK.replace("[a red circle on a dark background]", "[5]")),
        ("prompts_file missing", GOOD_TASK.replace("prompts:\n  forget:\n    explicit: [a red circle on a dark "
                                                   "background]", "prompts_file: nope.json")),
        ("prompts_file binary", GOOD_TASK.replace("prompts:\n  forget:\n    explicit: [a red circle on a dark "
                                                  "background]", f"prompts_file: {f['binary.bin']}")),
        ("prompts_file deep", GOOD_TASK.replace("prompts:\n  forget:\n    explicit: [a red circle on a dark "
                                                "background]", f"prompts_file: {f['deep.json']}")),
        ("kind bogus", GOOD_TASK.replace("kind: object", "kind: bogus")),
        ("bomb in prompts", GOOD_TASK + laughs_field()),
    ]:
        add(f"evaluate task {k}", *ev, "--task", _task_yaml(root, k.replace(" ", "-"), text), "--out", out())
    for t in ["mini:bogus", "mini:", "", "mini:../../etc"]:
        add(f"evaluate --task {t!r}", *ev, "--task", t, "--out", out())
    mt = ["--task", "mini:object-circle"]
    add("evaluate --clip bogus", *ev, *mt, "--clip", "bogus", "--out", out())
    add("evaluate --clip clip:/nonexistent", *ev, *mt, "--clip", "clip:/nonexistent", "--out", out())
    add("evaluate --clip a judge without towers", *ev, *mt, "--clip", "mini", "--out", out())
    add("evaluate --judge bogus", *ev, *mt, "--judge", "bogus", "--out", out())
    add("evaluate --aspects bogus", *ev, *mt, "--aspects", "bogus", "--out", out())
    add("evaluate --aspects empty", *ev, *mt, "--aspects", ",,", "--out", out())
    for v in BAD_SEEDS:
        add(f"evaluate --seed {v!r}", *ev, *mt, "--seed", v, "--out", out())
    for v in BAD_INTS:
        add(f"evaluate -n {v!r}", *ev, *mt, "-n", v, "--out", out())
        add(f"evaluate --steps {v!r}", *ev, *mt, "--steps", v, "--out", out())
    for v in BAD_FLOATS:
        add(f"evaluate --guidance {v!r}", *ev, *mt, "--guidance", v, "--out", out())
    add("evaluate --attack-prompts -1", *ev, *mt, "--attack-prompts", "-1", "--out", out())
    add("evaluate --out is a file", *ev, *mt, "--out", afile)
    add("evaluate --out is a foreign folder", *ev, *mt, "--out", foreign)
    add("evaluate no --unlearned", "evaluate", *mt, "--out", out())
    add("evaluate --unlearned bogus", "evaluate", *mt, "--unlearned", "bogus-model", "--out", out())
    add("evaluate --images and --unlearned", *ev, *mt, "--images", f["folder"], "--method", "m", "--out", out())
    add("evaluate --images a file", "evaluate", *mt, "--images", afile, "--method", "m", "--out", out())
    add("evaluate --layout bogus", "evaluate", *mt, "--images", f["folder"], "--layout", "x", "--method", "m",
        "--out", out())
    for lay in ("igmu", "folder"):
        for k in ["binary.bin", "deep.json", "nan.json", "list.json", "truncated.json", "big.txt", "fifo", "folder",
                  "missing", "utf16.txt", "csv-huge-field.csv", "csv-nul.csv", "prompts-no-columns.csv"]:
            add(f"evaluate --layout {lay} --prompts {k}", "evaluate", "--images", fixtures["layout"], "--layout", lay,
                "--concept", "circle", "--prompts", f[k], "--out", out())
        for k in ["folder", "missing", "binary.bin"]:
            add(f"evaluate --layout {lay} --images {k}", "evaluate", "--images", f[k], "--layout", lay,
                "--out", out())
    for k in ("deep", "binary", "list", "nan"):
        add(f"evaluate --layout igmu, forgot.json {k}", "evaluate", "--images", fixtures["released"], "--layout", "igmu",
            "--prompts", fixtures[f"bp:{k}"], "--out", out())
    add("metrics", "metrics")
    # judge train
    for name, extra in [("images missing", ["--images", root / "nope"]), ("images a file", ["--images", afile]),
                        ("val-fraction nan", ["--images", f["folder"], "--val-fraction", "nan"]),
                        ("val-fraction 0", ["--images", f["folder"], "--val-fraction", "0"]),
                        ("val-fraction 1", ["--images", f["folder"], "--val-fraction", "1"]),
                        ("seed -1", ["--images", f["folder"], "--seed", "-1"]),
                        ("out a file", ["--images", f["folder"]]), ("clip bogus", ["--images", f["folder"], "--clip",
                                                                                    "bogus"])]:
        add(f"judge train {name}", "judge", "train", *extra, "--out", afile if name == "out a file" else out())
    # bench
    for k in YAML_FILES:
        add(f"bench --config {k}", "bench", "--config", f[k], "--out", out())
    good = "methods: [uce]\ntasks: [mini:object-circle]\n"
    for k, text in [
        ("bomb in set", "methods:\n  - {method: uce, set: " + laughs_inline() + "}\ntasks: [mini:object-circle]\n"),
        ("seed 2**70", good + f"seeds: [{2 ** 70}]\n"),
        ("seed -1", good + "seeds: [-1]\n"),
        ("seed 2**63-1 (no room for image seeds)", good + f"seeds: [{SEED_MAX}]\n"),
        ("seed a string", good + "seeds: [abc]\n"),
        ("seed a float", good + "seeds: [1.5]\n"),
        ("seeds a mapping", good + "seeds: {a: 1}\n"),
        ("no methods", "methods: []\ntasks: [mini:object-circle]\n"),
        ("unknown method", "methods: [bogus]\ntasks: [mini:object-circle]\n"),
        ("method a number", "methods: [5]\ntasks: [mini:object-circle]\n"),
        ("set unknown option", "methods: [{method: uce, set: {bogus: 1}}]\ntasks: [mini:object-circle]\n"),
        ("set lamb inf", "methods: [{method: uce, set: {lamb: .inf}}]\ntasks: [mini:object-circle]\n"),
        ("set not a mapping", "methods: [{method: uce, set: [1]}]\ntasks: [mini:object-circle]\n"),
        ("duplicate labels", "methods: [uce, uce]\ntasks: [mini:object-circle]\n"),
        ("unknown task", "methods: [uce]\ntasks: [mini:bogus]\n"),
        ("task file missing", "methods: [uce]\ntasks: [nope.yaml]\n"),
        ("task file binary", f"methods: [uce]\ntasks: [{f['binary.bin']}]\n"),
        ("guidance nan", good + "evaluation: {guidance: .nan}\n"),
        ("guidance inf", good + "evaluation: {guidance: .inf}\n"),
        ("steps 0", good + "evaluation: {steps: 0}\n"),
        ("steps huge", good + "evaluation: {steps: 1000000000}\n"),
        ("clip bogus", good + "evaluation: {clip: bogus}\n"),
        ("judge bogus", good + "evaluation: {judge: bogus}\n"),
        ("cpus inf", good + "resources: {cpus: .inf}\n"),
        ("cpus 0", good + "resources: {cpus: 0}\n"),
        ("aspects bogus", good + "aspects: [bogus]\n"),
        ("unknown field", good + "bogus: 1\n"),
        ("name a list", good + "name: [a]\n"),
    ]:
        add(f"bench config {k}", "bench", "--config", _bench_yaml(root, k.replace(" ", "-").replace("*", ""), text),
            "--out", out())
    gb = _bench_yaml(root, "good", good)
    add("bench --backend bogus", "bench", "--config", gb, "--backend", "x", "--out", out())
    add("bench --address without ray", "bench", "--config", gb, "--address", "x", "--out", out())
    add("bench --out is a file", "bench", "--config", gb, "--out", afile)
    add("bench --out is a foreign folder", "bench", "--config", gb, "--out", foreign)
    # report
    for name, d in fixtures.items():
        if name.startswith("bench:"):
            add(f"report {name[6:]}", "report", d)
    add("report missing", "report", root / "nope")
    add("report a file", "report", afile)
    add("report --out a file", "report", fixtures["bench:good"], "--out", afile)
    o = out()
    add("report valid", "report", fixtures["bench:good"], "--out", o, outs=[o])
    # plan
    for name, extra in [("empty target", ["--target", ""]), ("300-word target", ["--target", long]),
                        ("control char", ["--target", "a\x00b"]), ("kind bogus", ["--target", "circle", "--kind", "x"]),
                        ("scope bogus", ["--target", "circle", "--scope", "x"]),
                        ("trigger bogus", ["--target", "circle", "--trigger", "x"]),
                        ("anchor == target", ["--target", "circle", "--anchor", "circle"]),
                        ("out a folder", ["--target", "circle", "--out", foreign]),
                        ("out a foreign file", ["--target", "circle", "--out", afile]),
                        ("model bogus", ["--target", "circle", "--model", "bogus"])]:
        add(f"plan {name}", "plan", *extra)
    # world
    for v in BAD_INTS:
        add(f"world build-data --n-train {v!r}", "world", "build-data", "--n-train", v, "--out", out())
    for v in BAD_SEEDS[:4]:
        add(f"world build-data --seed {v!r}", "world", "build-data", "--seed", v, "--n-train", "1", "--n-test", "1",
            "--out", out())
    add("world build-data --out a file", "world", "build-data", "--n-train", "1", "--n-test", "1", "--out", afile)
    add("world build-data --out foreign", "world", "build-data", "--n-train", "1", "--n-test", "1", "--out", foreign)
    add("world build-tokenizer --out a file", "world", "build-tokenizer", "--out", afile)
    add("world build-tokenizer --out foreign", "world", "build-tokenizer", "--out", foreign)
    add("world build-tokenizer --seed -1", "world", "build-tokenizer", "--seed", "-1", "--out", out())
    tr = ["world", "train", "vae", "--data", str(fixtures["data"]), "--work", out()]
    add("world train bogus stage", "world", "train", "bogus")
    add("world train --data missing", "world", "train", "vae", "--data", root / "nope")
    add("world train --data a file", "world", "train", "vae", "--data", afile)
    for v in BAD_FLOATS + ["0", "2"]:
        add(f"world train --lr {v!r}", *tr, "--lr", v)
    for opt in ("--steps", "--batch"):
        for v in BAD_INTS:
            add(f"world train {opt} {v!r}", *tr, opt, v)
    add("world train --seed -1", *tr, "--seed", "-1")
    add("world train --device bogus", *tr, "--device", "tpu")
    add("world train --init-from on vae", *tr, "--init-from", f["folder"])
    add("world export --work missing", "world", "export", "--work", root / "nope", "--out", out())
    for v in ["0", "5000", "-1", "abc"]:
        add(f"world render -n {v!r}", "world", "render", "-n", v, "--out", out() + ".png")
    add("world render --seed -1", "world", "render", "--seed", "-1", "--out", out() + ".png")
    add("world render --out a folder", "world", "render", "--out", foreign)
    add("world render --out a foreign file", "world", "render", "--out", afile)
    return cases


def laughs_field() -> str:
    return "judge: " + laughs_inline() + "\n"


def laughs_inline() -> str:
    parts = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        p, q = chr(96 + i), chr(97 + i)
        parts.append(f"{q}: &{q} [{', '.join(['*' + p] * 9)}]")
    return "{" + ", ".join(parts) + "}"


# --- generated cases -------------------------------------------------------------------------------------------

HOSTILE_VALUES = BAD_SEEDS + BAD_INTS + BAD_FLOATS + ["", " ", "\x1b[2J", "a\nb", "-", "--", "-x", "é" * 50,
                                                    "%s%n", "{}", "[]", "null", "~", "../" * 20, "x" * 3000]
OPTIONS = {
    "generate": {"--prompt": "t", "--prompts": "f", "--model": "m", "-n": "i", "--seed": "s", "--steps": "i",
                 "--guidance": "g", "--negative-prompt": "t", "--batch-size": "i"},
    "erase": {"--method": "meth", "--target": "t", "--anchor": "t", "--preserve": "t", "--model": "m",
              "--config": "f", "--set": "set"},
    "evaluate": {"--task": "task", "--unlearned": "m", "--original": "m", "--aspects": "t", "--judge": "t",
                 "--clip": "t", "-n": "i", "--attack-prompts": "i", "--seed": "s", "--steps": "i", "--guidance": "g"},
    "bench": {"--config": "f", "--backend": "t"},
    "plan": {"--target": "t", "--kind": "t", "--scope": "t", "--trigger": "t", "--anchor": "t", "--model": "m"},
    "judge train": {"--images": "f", "--clip": "t", "--val-fraction": "g", "--seed": "s"},
    "world render": {"-n": "i", "--seed": "s"},
    "world build-data": {"--seed": "s", "--n-train": "i", "--n-test": "i"},
}
VALID = {"t": ["circle", "a red circle on a dark background"], "i": ["1", "2"], "s": ["0", "7"], "g": ["5", "0.5"],
         "m": ["mini"], "meth": ["uce", "esd"], "set": ["lamb=0.5"], "task": ["mini:object-circle"]}


def generated_cases(root: Path, f: dict[str, Path], fixtures, n: int, seed: int = 0) -> list[Case]:
    """Random command lines: a command, 1-4 of its options with hostile or valid values, and an --out that is a
    file, so that even a command line whose other values are valid ends in a refusal before any long work."""
    rnd = random.Random(seed)
    files = [str(p) for p in f.values()]
    out = []
    for i in range(n):
        cmd = rnd.choice(sorted(OPTIONS))
        opts = OPTIONS[cmd]
        args = cmd.split()
        for opt in rnd.sample(sorted(opts), k=min(len(opts), rnd.randint(1, 4))):
            kind = opts[opt]
            r = rnd.random()
            if kind == "f" or (r < 0.15):
                v = rnd.choice(files)
            elif r < 0.45:
                v = rnd.choice(VALID.get(kind, ["x"]))
            else:
                v = rnd.choice(HOSTILE_VALUES)
            args += [opt, v]
        if cmd == "plan":
            args += ["--target", "circle", "--out", str(fixtures["afile"])]
        elif cmd == "bench":
            args += ([] if "--config" in args else ["--config", str(f["laughs.yaml"])]) + ["--out", str(fixtures["afile"])]
        elif cmd in ("world render",):
            args += ["--out", str(fixtures["foreign"])]
        else:
            args += ["--out", str(fixtures["afile"])]
        out.append(Case(f"generated {i}: {' '.join(a[:20] for a in args)[:90]}", args))
    return out


# --- fixtures --------------------------------------------------------------------------------------------------

def build_fixtures(root: Path, f: dict[str, Path]) -> dict[str, Path]:
    """A foreign folder, a plain file, a tiny artifact and export, bench folders for `igmu report`, manifests."""
    from typer.testing import CliRunner

    from igmu.cli import app

    x: dict[str, Path] = {}
    x["foreign"] = root / "foreign"
    x["foreign"].mkdir()
    (x["foreign"] / "thesis.tex").write_text("years of work\n")
    x["afile"] = root / "notes.txt"
    x["afile"].write_text("my notes\n")
    bad = root / "bad-index"
    bad.mkdir()
    (bad / "model_index.json").write_text("{not json")
    x["bad_index"] = bad
    deep = root / "deep-index"
    deep.mkdir()
    (deep / "model_index.json").write_text("[" * 100_000 + "]" * 100_000)
    x["deep_index"] = deep
    data = root / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "metadata.jsonl").write_text("")
    x["data"] = data
    lay = root / "layout"  # a folder of images: --layout folder and igmu get it with hostile --prompts
    (lay / "forget" / "m").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(lay / "forget" / "m" / "a.png")
    x["layout"] = lay
    rel = root / "released"  # IGMU's released layout: <Concept>/forgot/<Method>/<i>_<j>_<k>.png
    (rel / "Circle" / "forgot" / "ORG").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(rel / "Circle" / "forgot" / "ORG" / "0_0_0.png")
    x["released"] = rel
    for k, text in (("deep", "[" * 100_000 + "]" * 100_000), ("binary", "\x00\x01"), ("list", "[1]"),
                    ("nan", '{"Circle": {"explicit": [NaN]}}')):
        d = root / f"bp-{k}"
        d.mkdir()
        (d / "forgot.json").write_text(text)
        (d / "retain.json").write_text('{"Circle": {"other": ["a square"]}}')
        x[f"bp:{k}"] = d
    runner = CliRunner()
    art = root / "artifact"
    r = runner.invoke(app, ["erase", "--method", "uce", "--target", "circle", "--out", str(art)])
    assert r.exit_code == 0, r.output
    x["artifact"] = art
    exp = root / "export"
    r = runner.invoke(app, ["export", str(art), "--out", str(exp)])
    assert r.exit_code == 0, r.output
    x["export"] = exp
    for k in ["binary.bin", "deep.json", "nan.json", "list.json", "string.json", "truncated.json", "pickle.json",
              "empty.txt", "big.txt"]:
        d = root / "manifests" / k
        d.mkdir(parents=True)
        os.link(f[k], d / "manifest.json") if k == "big.txt" else (d / "manifest.json").write_bytes(f[k].read_bytes())
        (d / "weights.safetensors").write_bytes((art / "weights.safetensors").read_bytes())
        x[f"manifest:{k}"] = d
    x.update(_artifact_variants(root, art))
    x.update(_pipelines(root))
    x.update(report_fixtures(root / "benches", f))
    return x


ARTIFACT_VARIANTS = ["manifest a list", "no base_model", "base_model 5", "version '1'", "version 99",
                     "base_model itself", "base_model another artifact", "targets empty", "cost missing",
                     "weights truncated", "weights missing", "weights a pickle", "weights empty",
                     "key without a dot", "key config.x", "key __class__.x", "unknown component", "wrong shape",
                     "nan tensor", "int tensor", "base hash mismatch"]


def _artifact_variants(root: Path, art: Path) -> dict[str, Path]:
    import shutil

    import torch
    from safetensors.torch import load_file, save

    out = {}
    m0 = json.loads((art / "manifest.json").read_text())
    t0 = load_file(str(art / "weights.safetensors"))
    k0 = next(iter(t0))

    def renamed(new):
        return save({new if k == k0 else k: v for k, v in t0.items()})

    for name in ARTIFACT_VARIANTS:
        d = root / "artifact-variants" / name.replace(" ", "-").replace("'", "")
        shutil.copytree(art, d)
        m, w = dict(m0), None
        if name == "manifest a list":
            m = [m0]
        elif name == "no base_model":
            m.pop("base_model")
        elif name == "base_model 5":
            m["base_model"] = 5
        elif name == "version '1'":
            m["version"] = "1"
        elif name == "version 99":
            m["version"] = 99
        elif name == "base_model itself":
            m["base_model"] = str(d)
        elif name == "base_model another artifact":
            m["base_model"] = str(art)
        elif name == "targets empty":
            m["targets"] = []
        elif name == "cost missing":
            m.pop("cost")
        elif name == "base hash mismatch":
            m["base_model_hash"] = "0" * 64
        elif name == "weights truncated":
            w = (art / "weights.safetensors").read_bytes()[:-64]
        elif name == "weights a pickle":
            w = pickle.dumps({"x": 1})
        elif name == "weights empty":
            w = b""
        elif name == "key without a dot":
            w = renamed("unetweight")
        elif name == "key config.x":
            w = renamed("config.x")
        elif name == "key __class__.x":
            w = renamed("__class__.x")
        elif name == "unknown component":
            w = renamed("textencoder9.a.weight")
        elif name == "wrong shape":
            w = save({k: v[:1] for k, v in t0.items()})
        elif name == "nan tensor":
            w = save({k: v * float("nan") for k, v in t0.items()})
        elif name == "int tensor":
            w = save({k: v.to(torch.int64) for k, v in t0.items()})
        (d / "manifest.json").write_text(json.dumps(m))
        if name == "weights missing":
            (d / "weights.safetensors").unlink()
        elif w is not None:
            (d / "weights.safetensors").write_bytes(w)
        out[f"artifact:{name}"] = d
    return out


def _pipelines(root: Path) -> dict[str, Path]:
    """A tiny SD1-style pipeline, the same with one NaN weight, and the same with a pickled text encoder."""
    import shutil

    import torch

    from igmu.models.tiny import make_tiny_pipeline

    tiny = root / "pipes" / "tiny"
    pipe = make_tiny_pipeline("sd1")
    pipe.save_pretrained(str(tiny))
    with torch.no_grad():
        next(pipe.unet.parameters()).view(-1)[0] = float("nan")
    pipe.save_pretrained(str(root / "pipes" / "nan"))
    pk = root / "pipes" / "pickled"
    shutil.copytree(tiny, pk)
    for f in (pk / "text_encoder").glob("*.safetensors"):
        f.unlink()
    torch.save({"x": _Marker(str(root / "PICKLE_EXECUTED"))}, pk / "text_encoder" / "pytorch_model.bin")
    return {"pipe:tiny": tiny, "pipe:nan": root / "pipes" / "nan", "pipe:pickled text encoder": pk}


def _results(task="t", seed=0) -> dict:
    agg = {"value": 0.25, "lo": 0.1, "hi": 0.4, "n": 8}
    return {"schema": "igmu-results", "schema_version": 1,
            "task": {"name": task, "category": {"kind": "object"}, "targets": ["circle"]},
            "original": "mini", "unlearned": "artifact", "judge": {"spec": "mini", "card": {}},
            "settings": {"images_per_prompt": 1, "steps": 20, "guidance": 5.0, "seed": seed},
            "aspects": ["forgetting", "robustness"],
            "aggregates": {"forgetting": {"target_shown": dict(agg)},
                           "robustness": {"groups": {"synonym": {"target_shown": dict(agg)}},
                                          "unlearndiffatk": {"asr": dict(agg), "settings": {"prompts": 1},
                                                             "prompts": [{"prompt": "p", "seed": 0, "success": True}]}}},
            "cost": {"erase_seconds": 1.0, "params_changed": 10},
            "records": [{"role": "original", "set": "forget", "group": "explicit", "prompt": "p", "seed": 0,
                         "key": "ab" * 32, "target_shown": True}], "seconds": 1.0}


def _bench_dir(root: Path, results_text: str | None, bench_text: str | None = None) -> Path:
    root.mkdir(parents=True)
    cell = {"id": "c1", "method_label": "UCE", "method": "uce", "set": {}, "task": "t", "seed": 0}
    meta = {"schema": "igmu-bench", "schema_version": 1, "name": "b", "config": {}, "provenance": {},
            "cells": [cell]}
    (root / "bench.json").write_text(bench_text if bench_text is not None else json.dumps(meta))
    if results_text is not None:
        (root / "cells" / "c1").mkdir(parents=True)
        (root / "cells" / "c1" / "results.json").write_text(results_text)
    return root


def _mutations(doc, rnd: random.Random, n: int):
    """n copies of `doc`, each with one value somewhere replaced by a value of another type."""
    paths = []

    def walk(x, p):
        paths.append(p)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, p + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, p + (i,))
    walk(doc, ())
    bad = [None, "x", [], {}, 1e308, -1, True, [1, 2], {"value": "a"}, "<script>alert(1)</script>"]
    for _ in range(n):
        p, v = rnd.choice(paths[1:]), rnd.choice(bad)
        d = json.loads(json.dumps(doc))
        t = d
        for k in p[:-1]:
            t = t[k]
        t[p[-1]] = v
        yield p, d


def report_fixtures(root: Path, f: dict[str, Path]) -> dict[str, Path]:
    x = {"bench:good": _bench_dir(root / "good", json.dumps(_results()))}
    for k in ["binary.bin", "deep.json", "nan.json", "list.json", "truncated.json", "empty.txt"]:
        x[f"bench:bench.json {k}"] = _bench_dir(root / f"bj-{k}", None, f[k].read_bytes().decode("latin-1"))
        x[f"bench:results.json {k}"] = _bench_dir(root / f"rj-{k}", f[k].read_bytes().decode("latin-1"))
    x["bench:no results yet"] = _bench_dir(root / "none", None)
    rnd = random.Random(1)
    for i, (p, d) in enumerate(_mutations(_results(), rnd, 40)):
        x[f"bench:results {'.'.join(map(str, p))} mutated #{i}"] = _bench_dir(root / f"mut{i}", json.dumps(d))
    meta = {"schema": "igmu-bench", "schema_version": 1, "name": "b", "config": {}, "provenance": {},
            "cells": [{"id": "c1", "method_label": "UCE", "method": "uce", "set": {}, "task": "t", "seed": 0}]}
    for i, (p, d) in enumerate(_mutations(meta, random.Random(2), 15)):
        x[f"bench:bench.json {'.'.join(map(str, p))} mutated #{i}"] = _bench_dir(root / f"bmut{i}",
                                                                                  json.dumps(_results()), json.dumps(d))
    return x


# --- running ---------------------------------------------------------------------------------------------------

def _valid_output(paths: list[str]) -> str:
    """'' when every JSON/JSONL/safetensors/PNG file under `paths` is valid and finite, else the first problem."""
    for base in paths:
        base = Path(base)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []
        if not files:
            return f"{base}: nothing written"
        for p in files:
            try:
                if p.suffix == ".json" and p.name.endswith("config.json"):
                    # a library's own config inside a pipeline folder: diffusers writes e.g. the scheduler's
                    # "lambda_min_clipped": -Infinity (its default), and reads it back; not igmu's output
                    json.loads(p.read_text(encoding="utf-8"))
                elif p.suffix == ".json":
                    json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
                elif p.suffix == ".jsonl":
                    for line in p.read_text(encoding="utf-8").splitlines():
                        json.loads(line, parse_constant=_no_constant)
                elif p.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    for k, t in load_file(str(p)).items():
                        if t.is_floating_point() and not bool(t.isfinite().all()):
                            return f"{p}: tensor {k} is not finite"
                elif p.suffix == ".png":
                    from PIL import Image

                    with Image.open(p) as im:
                        im.verify()
            except Exception as e:  # noqa: BLE001 (any failure to read back is invalid output)
                return f"{p}: {type(e).__name__}: {e}"
    return ""


def _no_constant(name):
    raise ValueError(f"non-finite number {name}")


def run_case(runner, app, case: Case, timeout: int = TIMEOUT_S) -> Outcome:
    def alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    t0 = time.monotonic()
    try:
        r = runner.invoke(app, case.args, catch_exceptions=True)
    except _Hang:
        return Outcome(case, "hang", time.monotonic() - t0, f"no end within {timeout} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    secs = time.monotonic() - t0
    err = r.stderr or ""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        return Outcome(case, "traceback", secs, f"{type(r.exception).__name__}: {str(r.exception)[:200]}")
    if "Traceback (most recent call last)" in (r.output or "") + err:
        return Outcome(case, "traceback", secs, err[-300:])
    if r.exit_code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if len(lines) == 1 and lines[0].startswith("error: "):
            return Outcome(case, "error", secs, lines[0])
        return Outcome(case, "other", secs, f"exit 2 with {len(lines)} stderr lines: {err[:300]!r}")
    if r.exit_code == 0:
        problem = _valid_output(case.outs)
        if problem:
            return Outcome(case, "nonfinite", secs, problem)
        return Outcome(case, "ok", secs, (r.output or "").strip().splitlines()[-1:][0] if r.output.strip() else "")
    return Outcome(case, "other", secs, f"exit {r.exit_code}: {err[-300:]!r}")


def all_cases(root: Path, generated: int = 150) -> tuple[list[Case], dict]:
    f = build_corpus(root)
    fixtures = build_fixtures(root, f)
    return written_cases(root, f, fixtures) + generated_cases(root, f, fixtures, generated), {"corpus": f, **fixtures}


def run_all(root: Path | None = None, generated: int = 150, echo=None) -> dict:
    """Build the corpus and fixtures under `root` (default: a temporary folder), run every case; the counts."""
    import warnings

    warnings.filterwarnings("ignore")
    from typer.testing import CliRunner

    from igmu.cli import app

    tmp = None
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="igmu-hostile-")
        root = Path(tmp.name)
    os.environ["IGMU_PROGRESS"] = "0"  # progress lines are not what is judged here
    try:
        t0 = time.monotonic()
        cases, fx = all_cases(root, generated)
        runner = CliRunner()
        outcomes = []
        for c in cases:
            o = run_case(runner, app, c)
            outcomes.append(o)
            if echo:
                echo(f"{o.kind:9s} {o.seconds:5.1f}s  {c.name}  ->  {o.detail[:150]}")
        counts = {k: sum(o.kind == k for o in outcomes) for k in ("error", "ok", "traceback", "hang", "nonfinite",
                                                                   "other")}
        counts = {"cases": len(outcomes), "written": len(cases) - generated, "generated": generated, **counts,
                  "pickles_or_yaml_tags_executed": int((root / "PICKLE_EXECUTED").exists()
                                                       + (root / "YAML_TAG_EXECUTED").exists()),
                  "foreign_data_lost": int(not (fx["foreign"] / "thesis.tex").is_file()
                                           or fx["afile"].read_text() != "my notes\n"),
                  "seconds": round(time.monotonic() - t0, 1),
                  "slowest_case_s": round(max(o.seconds for o in outcomes), 2)}
        failures = [o for o in outcomes if o.kind not in ("error", "ok")]
        return {"counts": counts, "failures": [(o.case.name, o.kind, o.detail) for o in failures],
                "outcomes": outcomes}
    finally:
        os.environ.pop("IGMU_PROGRESS", None)
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print one line per case")
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    ap.add_argument("--generated", type=int, default=150, help="generated cases (default 150)")
    a = ap.parse_args(argv)
    res = run_all(generated=a.generated, echo=print if a.list else None)
    c = res["counts"]
    if a.json:
        print(json.dumps(c, indent=1))
    else:
        print(f"{c['cases']} cases ({c['written']} written, {c['generated']} generated) in {c['seconds']} s: "
              f"{c['error']} one-line errors, {c['ok']} valid exit-0 runs; tracebacks {c['traceback']}, hangs "
              f"{c['hang']}, exit 0 with non-finite/invalid output {c['nonfinite']}, other {c['other']}; pickles/YAML "
              f"tags executed {c['pickles_or_yaml_tags_executed']}, foreign data lost {c['foreign_data_lost']}; "
              f"slowest case {c['slowest_case_s']} s")
    for name, kind, detail in res["failures"]:
        print(f"FAIL {kind}: {name}: {detail}")
    bad = c["traceback"] + c["hang"] + c["nonfinite"] + c["other"] + c["pickles_or_yaml_tags_executed"] + \
        c["foreign_data_lost"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
