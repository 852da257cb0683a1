"""The README keeps its promises: every Python snippet runs verbatim, and every folder the
README's and the examples' commands write is git-ignored."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SNIPPET_TIMEOUT_S = 900
PREREQUISITE = re.compile(r"#\s*from:\s*(.+)$", re.M)  # `# from: CMD`: CMD writes the input
NEEDS_WORK = ("learn(", "from:")  # snippets that train or first run a command: slow


def snippets(language: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced ``language`` block of the README."""
    text = README.read_text()
    pattern = re.compile(rf"^```{language}\n(.*?)^```", re.M | re.S)
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in pattern.finditer(text)]


def python_snippets() -> list[object]:
    return [
        pytest.param(
            code,
            id=f"README.md:{line}",
            marks=[pytest.mark.slow] if any(w in code for w in NEEDS_WORK) else [],
        )
        for line, code in snippets("python")
    ]


@pytest.mark.parametrize("code", python_snippets())
def test_python_snippet_runs_verbatim(code: str, tmp_path: Path) -> None:
    """Each block runs as written, in a fresh interpreter, in an empty folder that sees the
    repository's ``examples/`` (commands named in ``# from:`` comments run first)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for command in PREREQUISITE.findall(code):
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=SNIPPET_TIMEOUT_S,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    (tmp_path / "snippet.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=SNIPPET_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_the_readme_has_python_snippets() -> None:
    assert len(snippets("python")) >= 2  # the API tour and the RL-library one at least


OUT_PATTERNS = (r"--out[ =]+([\w./-]+)", r'default=Path\("([\w./-]+)"\)')


def written_folders() -> set[str]:
    """The top folder of every output the README's commands, the examples' and agents'
    defaults and the CLI's ``--out`` defaults name (placeholders such as ``DIR`` left out)."""
    from trainenv.cli import _parser

    sources = [README, *(ROOT / "examples").glob("*.py"), *(ROOT / "agents").glob("*.py")]
    texts = [path.read_text() for path in sources]
    found = {m.group(1) for t in texts for p in OUT_PATTERNS for m in re.finditer(p, t)}
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in sub.choices.values():
        found |= {str(a.default) for a in command._actions if "--out" in a.option_strings}
    return {path.split("/")[0] for path in found - {"None"} if not path.isupper()}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_every_output_folder_the_docs_name_is_git_ignored() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    folders = written_folders()
    assert {"audit-out", "findings-out", "results", "runs"} <= folders
    probes = [f"{folder}/probe" for folder in sorted(folders)]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *probes],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    not_ignored = [
        line.split("\t")[-1] for line in done.stdout.splitlines() if line.startswith("::")
    ]
    assert not not_ignored, f"add these folders to .gitignore: {not_ignored}"
