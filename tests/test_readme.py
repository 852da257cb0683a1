"""The README keeps its promises: every folder the README's and the examples' commands write
is git-ignored."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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
