"""The command-line shim: help, unknown verbs, Hydra help of a verb."""
from __future__ import annotations

import subprocess
import sys

from neurolab.cli import TASKS, main


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in list(TASKS) + ["store"]:
        assert f"  {verb}" in out


def test_unknown_verb_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err


def test_verb_help_is_hydras_help():
    r = subprocess.run([sys.executable, "-m", "neurolab.cli", "extract", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Powered by Hydra" in r.stdout and "model" in r.stdout
