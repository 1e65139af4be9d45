"""The wheel carries the Hydra configs and the demo corpus, and configs are found from it."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "neurolab").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found - listed == set(), f"add these packages to pyproject.toml: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
    )
    (w,) = out.glob("neurolab-*.whl")
    return w


def test_wheel_contains_configs_and_demo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = sorted(n for n in names if n.startswith("neurolab/conf/") and n.endswith(".yaml"))
    repo_conf = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    assert sorted(n[len("neurolab/conf/"):] for n in conf) == repo_conf
    assert "neurolab/corpus/demo/demo.conllu" in names


def test_configs_compose_from_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    code = (
        "from neurolab.config import compose, config_dir; import neurolab; "
        "assert config_dir().startswith(%r), config_dir(); "
        "cfg = compose('extract', run_dir='x'); "
        "import os; assert os.path.exists(cfg.corpus.path), cfg.corpus.path; print('ok')" % str(target)
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
