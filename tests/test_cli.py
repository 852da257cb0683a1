"""The ``trainenv`` command line: bad input is one clear error (exit 2, no traceback)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainenv.cli import _parser, main

PLAN = "env: trainenv/Digits-MLP-v0\nonsets: [3]\nhorizon: 5\nseeds: 1\n"
GRID = "interventions: [{name: lr_shock, magnitudes: [10]}]\n"


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command, assert it failed as a user error, return its one stderr line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith(f"trainenv {argv[0]}: error: ")
    return captured.err


def audit_fails(
    plan_text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, Path]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text)
    out = tmp_path / "out"
    err = fails(["audit", str(plan), "--out", str(out)], capsys)
    assert not out.exists()  # refused before any work
    return err, plan


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env: [trainenv/Digits-MLP-v0\nseeds: 1\n", ":2:6: not valid YAML: expected ','"),
        ("env: trainenv/Digits-MLP-v0\n  seeds: 1\n", ":2:8: not valid YAML: mapping values"),
    ],
)
def test_a_yaml_syntax_error_is_one_line_with_its_position(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, plan = audit_fails(text, tmp_path, capsys)
    assert err.count("\n") == 1
    assert f"{plan}{expected}" in err


def test_python_tags_are_refused_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    text = f'env: !!python/object/apply:os.system ["touch {marker}"]\n{GRID}'
    err, plan = audit_fails(PLAN.replace("env: trainenv/Digits-MLP-v0\n", text), tmp_path, capsys)
    assert err.count("\n") == 1
    assert f"{plan}:1:6: tag !!python/object/apply:os.system refused" in err
    assert not marker.exists()


def test_a_missing_plan_and_an_out_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(["audit", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert err.count("\n") == 1 and "nope.yaml' does not exist" in err
    a_file = tmp_path / "results"
    a_file.write_text("")
    for command in (["audit"], ["findings", "--quick"]):
        err = fails([*command, "--out", str(a_file)], capsys)
        assert err.count("\n") == 1 and "--out" in err and "is an existing file" in err
    assert a_file.read_text() == ""


def test_a_typo_in_an_intervention_names_it_and_the_allowed_fields_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = "interventions: [{name: lr_shock, magnitudes: [10], duraton: 3}]\n"
    err, plan = audit_fails(PLAN + grid, tmp_path, capsys)
    assert err == (
        f"trainenv audit: error: {plan}: interventions[0].duraton: unknown field "
        "(did you mean 'duration'?); allowed fields: name, magnitudes, duration\n"
    )  # no "interventions: Tuple should have at least 1 item", no pydantic links


def test_a_misspelt_top_level_field_is_not_also_reported_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, _ = audit_fails(PLAN + GRID.replace("interventions", "interventons"), tmp_path, capsys)
    assert "interventons: unknown field (did you mean 'interventions'?)" in err
    assert "allowed fields: recipes, interventions, onsets" in err and "env_kwargs" in err
    assert "missing" not in err and "errors.pydantic.dev" not in err


def test_several_problems_one_line_each_named_as_the_plan_writes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "env: trainenv/Digits-MLP-v0\nstabilizers: [{name: grad_clip, magnitude: 1, x: 2}]\n"
        "interventions: [{name: lr_shock, magnitudes: [0.5]}]\nonsets: [3]\nseeds: 1\n"
    )
    err, plan = audit_fails(text, tmp_path, capsys)
    lines = err.splitlines()
    assert lines[0] == f"trainenv audit: error: {plan}: 3 problems"
    assert lines[1:] == [
        "  stabilizers[0].x: unknown field; allowed fields: name, magnitude",
        "  interventions[0]: magnitude of 'lr_shock' must be in [2.0, 10000.0], got 0.5",
        "  horizon: required field missing (fields: recipes, interventions, onsets, horizon, "
        "seeds, tolerance, backend, workers, address, env, env_kwargs, stabilizers)",
    ]


def test_a_plan_that_is_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err, plan = audit_fails("- lr_shock\n- weight_noise\n", tmp_path, capsys)
    assert f"{plan}: must be a mapping of fields (recipes, interventions," in err
    assert err.rstrip().endswith("got a list")


# -- trainenv list ------------------------------------------------------------------------------
def test_registered_metadata_is_what_building_each_env_gives() -> None:
    """``trainenv list`` and the docs read the declared specs; they must not drift."""
    import gymnasium as gym

    from trainenv.registration import REGISTERED

    for env_id, spec in REGISTERED.items():
        env = gym.make(env_id, observation="telemetry").unwrapped
        assert type(env.trainer).__name__ == spec.trainer, env_id
        assert sorted(env.trainer.targets) == sorted(spec.targets), env_id
        assert env.action_spec.interventions == spec.interventions(), env_id


def test_list_builds_nothing() -> None:
    code = (
        "import sys; from trainenv.cli import main; assert main(['list']) == 0; "
        "heavy = {'torch', 'stable_baselines3', 'transformers', 'sklearn'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "SB3Trainer: trainenv/CartPole-PPO-v0" in done.stdout
    assert "CausalLMTrainer: trainenv/TinyLM-v0" in done.stdout


def test_list_columns_hold_what_their_headers_say(capsys: pytest.CaptureFixture[str]) -> None:
    from trainenv.core import interventions as registry

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rule = lines[1], lines[2]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    spans[-1] = (spans[-1][0], None)  # the last column runs to the end of its line
    names = [header[a:b].strip() for a, b in spans]
    assert names == ["intervention", "dimension", "role", "magnitude", "acts on", "steps",
                     "what it does"]  # fmt: skip
    row = next(line for line in lines if line.startswith("optimizer_reset "))
    cell = {n: row[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)}
    lr_reset = registry.get("optimizer_reset")
    assert cell == {
        "intervention": "optimizer_reset",
        "dimension": "optimization",
        "role": "perturbation",
        "magnitude": "[0.1, 1] lin",
        "acts on": "event optimizer_reset",
        "steps": str(lr_reset.duration),
        "what it does": lr_reset.description,
    }


# -- the parsers --------------------------------------------------------------------------------
def commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_and_argument_has_help_stating_its_default() -> None:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert {c.dest: bool(c.help) for c in sub._choices_actions} == dict.fromkeys(commands(), True)
    for name, command in {"trainenv": _parser(), **commands()}.items():
        for action in command._actions:
            where = f"trainenv {name} {action.option_strings or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, where
            if action.default not in (None, False, argparse.SUPPRESS):
                help_text = action.help % {"default": action.default}
                assert f"default: {action.default}" in help_text.replace("./", ""), where


def test_shared_options_have_the_same_default() -> None:
    defaults: dict[str, dict[str, object]] = {}
    for name, command in commands().items():
        for action in command._actions:
            for option in action.option_strings:
                defaults.setdefault(option, {})[name] = action.default
    assert defaults["--workers"] == {"audit": None, "findings": None}  # the CPU count, both
    # --out: a folder command writes ./COMMAND-out; calibrate's --out is one file
    assert defaults.pop("--out") == {
        "audit": Path("audit-out"),
        "calibrate": None,
        "findings": Path("findings-out"),
    }
    for option, by_command in defaults.items():
        assert len({repr(d) for d in by_command.values()}) == 1, (option, by_command)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import trainenv

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"trainenv {trainenv.__version__}\n"


# -- progress -----------------------------------------------------------------------------------
def test_an_audit_logs_progress_lines_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainenv.audit import progress

    from .test_audit_runner import tiny_plan

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # a line per result, not per 20 s
    plan = tmp_path / "plan.yaml"
    plan.write_text(tiny_plan().to_yaml())
    out = str(tmp_path / "out")
    assert main(["audit", str(plan), "--out", out, "--backend", "serial", "--no-report"]) == 0
    first, *lines = capsys.readouterr().err.splitlines()
    n = tiny_plan().n_runs
    assert first == f"audit: {n} runs"
    assert len(lines) == len(tiny_plan().seeds)  # a result per seed: its 5 runs at once
    pattern = rf"audit: (\d+)/{n} runs \(\d+%\), \d+:\d\d elapsed(, about \d+:\d\d left)?"
    matches = [re.fullmatch(pattern, line) for line in lines]  # plain lines, no bar
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches if m] == [n // 2, n]
    assert all(m.group(2) for m in matches[:-1] if m) and lines[-1].startswith(f"audit: {n}/{n}")


def test_progress_lines_are_spaced_and_estimate_from_this_sessions_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainenv.audit import progress

    clock = iter([0.0, 5.0, 30.0, 95.0])  # start, then one reading per update
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.ProgressLines(total=10, done=4, desc="audit", every=20) as lines:
        lines.update(1)  # 5 s: not due
        lines.update(1)  # 30 s: 2 runs in 30 s, 4 left -> about 60 s
        lines.update(4)  # the last run always prints
    assert capsys.readouterr().err.splitlines() == [
        "audit: 10 runs, 4 done before",
        "audit: 6/10 runs (60%), 0:30 elapsed, about 1:00 left",
        "audit: 10/10 runs (100%), 1:35 elapsed",
    ]
