"""Helpers shared by the tests that drive the `igmu` command line."""
import subprocess
import sys


def cli(*args, **kw):
    """Run `python -m igmu.cli ARGS`, capturing text output (keyword arguments go to subprocess.run)."""
    return subprocess.run([sys.executable, "-m", "igmu.cli", *args], capture_output=True, text=True, **kw)


def one_line_error(r, needle):
    """The command failed as a user mistake: exit code 2 and exactly one 'error: ...' line naming `needle`."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def run(*args, env=None):
    """Run `igmu ARGS` in this process (typer's CliRunner): no interpreter start, no torch import per call."""
    from typer.testing import CliRunner

    from igmu.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def clean_error(r, needle):
    """An in-process run (run) failed as a user mistake: no exception escaped, exit code 2, and exactly one
    'error: ...' line on stderr naming `needle`."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
