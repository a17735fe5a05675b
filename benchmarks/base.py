"""The base revision of the A/B phase: exported from git and installed into its own venv."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.kit import ROOT


class BaseError(Exception):
    """The base revision could not be exported or installed."""


@dataclass(frozen=True)
class BaseRevision:
    """A revision of this repository installed on its own: its code, its dependencies."""

    rev: str
    """As given on the command line (`main`, `f3cb48a`, ...)."""
    commit: str
    """Its short commit id."""
    venv: Path

    @property
    def worker(self) -> Path:
        return self.venv / "bin" / "billing-worker"

    @property
    def label(self) -> str:
        return self.commit if self.rev == self.commit else f"{self.rev} ({self.commit})"


def _git(*args: str) -> bytes:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=False)
    if done.returncode != 0:
        raise BaseError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def install_base(rev: str, cache_dir: Path) -> BaseRevision:
    """Export `rev` (`git archive`) and install it, non-editable with the dependency ranges of
    its own pyproject.toml, into `cache_dir/<commit>/venv`; reused when already there."""
    commit = _git("rev-parse", "--short=7", f"{rev}^{{commit}}").decode().strip()
    home = cache_dir / commit
    venv = home / "venv"
    done = venv / ".installed"
    if done.exists():
        return BaseRevision(rev, commit, venv)
    source = home / "src"
    source.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", commit))) as tar:
        tar.extractall(source, filter="data")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
    ]
    for step in steps:
        if subprocess.run(step, check=False, stdin=subprocess.DEVNULL).returncode != 0:
            raise BaseError(f"installing {rev} failed at: {' '.join(step)}")
    done.write_text(commit + "\n")
    return BaseRevision(rev, commit, venv)
