"""The ``trainenv`` command: audit (with its report), report, list, and its errors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from trainenv.cli import main

from .test_audit_runner import tiny_plan


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("cli")
    plan = root / "plan.yaml"
    plan.write_text(tiny_plan().to_yaml())
    out = root / "out"
    buffer = io.StringIO()  # a module-scoped fixture cannot use capsys
    with contextlib.redirect_stdout(buffer):
        assert main(["audit", str(plan), "--out", str(out), "--backend", "serial"]) == 0
    return out, buffer.getvalue()


def test_audit_prints_the_summary_and_writes_the_report(audited: tuple[Path, str]) -> None:
    out, printed = audited
    assert "Stability profile" in printed and "Margins" in printed
    assert "lr_shock" in printed and "weight_noise" in printed
    assert f"report: {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    for figure in ("profile.png", "margin_curves.png", "trajectories_Digits-MLP-v0.png"):
        assert f"(figures/{figure})" in report
        assert (out / "figures" / figure).stat().st_size > 10_000
    assert "| recipe" in report and "95% CI" in report
    assert (out / "plan.yaml").read_text() == tiny_plan().to_yaml()


def test_report_rebuilds_from_the_results(
    audited: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, printed = audited
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists()
    assert capsys.readouterr().out == printed


def test_errors_name_the_problem_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "env: trainenv/Digits-MLP-v0\ninterventions: [{name: lr_shock, "
        "magnitudes: [0.5]}]\nonsets: [3]\nhorizon: 5\nseeds: 1\n"
    )
    assert main(["audit", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "interventions[0]" in err and "[2.0, 10000.0]" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing ran
    good = tmp_path / "good.yaml"
    good.write_text(tiny_plan().to_yaml())
    assert main(["audit", str(good), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "workers must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "no audit results" in capsys.readouterr().err


def test_list_shows_environments_and_interventions_per_trainer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "SupervisedTrainer: trainenv/Digits-MLP-v0" in out
    assert "lr_shock         optimization  perturbation  [2, 10000] log" in out
    assert "grad_clip" in out and "stabilizer" in out
