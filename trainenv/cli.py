"""The ``trainenv`` command.

::

    trainenv audit [PLAN] [--out DIR] [--backend auto|population|serial|process|ray] [--workers N]
                   [--address A]
    trainenv report DIR
    trainenv list
    trainenv calibrate ENV_ID [--seeds N] [--window W] [--radius R] [--out FILE]
    trainenv findings [--quick] [--out DIR] [--workers N]
    trainenv --version

``audit`` without a plan audits ``trainenv/CartPole-PPO-v0`` across the four dimensions.
A command that writes a folder writes ``./COMMAND-out`` (``audit-out``, ``findings-out``)
unless ``--out`` names another; rerunning it with the same ``--out`` resumes it. ``--workers``
defaults to the CPU count everywhere. ``calibrate`` refits an environment's
meta-state encoder and reference band; ``findings`` tests the seed paper's three claims.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from trainenv.audit.backends import BACKENDS

if TYPE_CHECKING:
    from trainenv.core.interventions import Intervention


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args) or 0)
    except ValueError as error:  # a bad plan or option: the user's to fix, no traceback
        print(f"trainenv {args.name}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`trainenv list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs advise
        return 0


OUT_RULE = "every command that writes a folder writes ./COMMAND-out unless --out names another"
WORKERS_HELP = "parallel worker processes (default: the CPU count)"


def _parser() -> argparse.ArgumentParser:
    from trainenv import __version__

    parser = argparse.ArgumentParser(
        prog="trainenv",
        description="Stability audits of training recipes run as Gymnasium environments.",
        epilog=f"Outputs: {OUT_RULE}; rerunning a command with the same --out resumes it.",
    )
    parser.add_argument("--version", action="version", version=f"trainenv {__version__}")
    sub = parser.add_subparsers(
        required=True, metavar="COMMAND", help="one of the commands below (COMMAND -h: its options)"
    )

    audit = sub.add_parser("audit", help="run a perturbation audit (resumable)")
    audit.add_argument(
        "plan",
        nargs="?",
        type=Path,
        help="YAML plan (default: CartPole-PPO-v0 across the four dimensions)",
    )
    _out_folder(audit, "audit")
    audit.add_argument(
        "--backend",
        choices=BACKENDS,
        help="where runs execute (default: the plan's, else auto: population where possible)",
    )
    audit.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="parallel worker processes (default: the plan's, else the CPU count)",
    )
    audit.add_argument("--address", help="Ray cluster address (with --backend ray)")
    audit.add_argument(
        "--no-report", action="store_true", help="skip the report (report.md, report.html, figures)"
    )
    audit.add_argument(
        "--flush-seconds",
        type=float,
        metavar="S",
        help="write finished runs to --out at least this often, in batches (default 30; "
        "kill -9 loses at most these and the runs in flight; 0: each run as it finishes)",
    )
    audit.set_defaults(command=_audit, name="audit")

    report = sub.add_parser(
        "report",
        help="write report.md, figures and report.html for a results directory (audit or "
        "controller evaluation)",
    )
    report.add_argument(
        "dir",
        type=Path,
        metavar="DIR",
        help="a results folder: the --out of an audit (with runs/ and steps/) or of a "
        "controller evaluation",
    )
    report.set_defaults(command=_report, name="report")

    listing = sub.add_parser(
        "list", help="registered environments and the interventions each offers, per trainer"
    )
    listing.set_defaults(command=_list, name="list")

    calibrate = sub.add_parser(
        "calibrate", help="fit an environment's meta-state encoder and reference band"
    )
    calibrate.add_argument("env_id", help="registered environment id, e.g. trainenv/Digits-MLP-v0")
    calibrate.add_argument(
        "--seeds", type=int, metavar="N", default=8, help="reference runs (default: %(default)s)"
    )
    calibrate.add_argument(
        "--window",
        type=int,
        metavar="W",
        default=16,
        help="updates per window (default: %(default)s)",
    )
    calibrate.add_argument(
        "--radius",
        type=int,
        metavar="R",
        default=2,
        help="steps pooled each side into a band step (default: %(default)s)",
    )
    calibrate.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="output .npz file, not a folder (default: the file the environment loads, "
        "shipped with trainenv)",
    )
    calibrate.set_defaults(command=_calibrate, name="calibrate")

    findings = sub.add_parser(
        "findings",
        help="test the seed paper's three claims; write a report (resumes if interrupted)",
    )
    findings.add_argument("--quick", action="store_true", help="the ~5-minute version (CI)")
    _out_folder(findings, "findings")
    findings.add_argument("--workers", type=int, metavar="N", help=WORKERS_HELP)
    findings.set_defaults(command=_findings, name="findings")
    return parser


def _out_folder(command: argparse.ArgumentParser, name: str) -> None:
    """The ``--out`` of a command that writes a folder: ``./NAME-out`` by default."""
    command.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        default=Path(f"{name}-out"),
        help=f"output folder (default: ./%(default)s; {OUT_RULE})",
    )


def _audit(args: argparse.Namespace) -> int:
    from trainenv.audit.plan import AuditPlan, default_plan
    from trainenv.audit.report import write_report
    from trainenv.audit.runner import run_audit
    from trainenv.audit.store import FLUSH_SECONDS
    from trainenv.audit.summary import format_summary, summarize

    _output_folder(args.out)
    plan = AuditPlan.from_yaml(args.plan) if args.plan else default_plan()
    with _interruptible():
        try:
            store = run_audit(
                plan,
                args.out,
                backend=args.backend,
                workers=args.workers,
                address=args.address,
                flush_seconds=FLUSH_SECONDS if args.flush_seconds is None else args.flush_seconds,
            )
            if args.no_report:
                summary = summarize(store.runs())
            else:
                report, summary = write_report(args.out)
                _print_report(report)
        except _Interrupted as stop:  # every finished run is written by now
            print(f"trainenv audit: {INTERRUPTED}", file=sys.stderr)
            return 128 + stop.signum
    print(format_summary(summary))
    return 0


INTERRUPTED = "interrupted — rerun the same command to resume"


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (``signum``); a BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` swallows it on its way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`_Interrupted` (in the main thread; further
    signals are ignored while the audit writes its last batch and stops its workers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise _Interrupted(signum)

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _report(args: argparse.Namespace) -> int:
    from trainenv.audit.controllers import is_controller_evaluation, write_controller_report
    from trainenv.audit.report import write_report
    from trainenv.audit.store import ResultStore
    from trainenv.audit.summary import format_summary

    if not (args.dir / "runs").is_dir():
        raise ValueError(f"{args.dir} holds no audit results (no runs/ directory)")
    if is_controller_evaluation(ResultStore(args.dir).runs()):
        report, controllers = write_controller_report(args.dir)
        text = controllers.text()
    else:
        report, summary = write_report(args.dir)
        text = format_summary(summary)
    _print_report(report)
    print(text)
    return 0


def _list(args: argparse.Namespace) -> int:
    from trainenv.audit.formatting import format_table
    from trainenv.registration import REGISTERED

    # From the registered specs: building each env to ask it took seconds (torch, SB3, ...).
    by_trainer: dict[str, list[str]] = {}
    supported: dict[str, tuple[Intervention, ...]] = {}
    for env_id, spec in REGISTERED.items():
        by_trainer.setdefault(spec.trainer, []).append(env_id)
        supported[spec.trainer] = spec.interventions()
    for trainer, env_ids in by_trainer.items():
        print(f"{trainer}: {', '.join(env_ids)}")
        rows = [
            [
                i.name,
                i.dimension.value,
                i.role.value,
                _range(i),
                i.knob or f"event {i.event}",
                str(i.duration),
                i.description,
            ]
            for i in supported[trainer]
        ]
        headers = [
            "intervention",
            "dimension",
            "role",
            "magnitude",
            "acts on",
            "steps",
            "what it does",
        ]
        print(format_table(headers, rows, markdown=False))
        print()
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import torch

    from trainenv.calibration import write_encoder

    torch.set_num_threads(1)  # tiny runs: more threads only fight over the cores
    encoder, out = write_encoder(args.env_id, args.seeds, args.window, args.radius, args.out)
    ratios = [round(float(r), 3) for r in encoder.explained_variance_ratio_]  # type: ignore[union-attr]
    band = f", band over {len(encoder.band_)} steps" if encoder.band_ is not None else ""
    print(f"{args.env_id}: {encoder.n_components} components, explained variance {ratios}{band}")
    print(f"encoder: {out}")
    return 0


def _findings(args: argparse.Namespace) -> int:
    import torch

    from trainenv.findings import FULL_EXPECTED_MINUTES, run_findings

    _output_folder(args.out)
    torch.set_num_threads(1)
    if not args.quick:
        print(
            f"the full version takes about {FULL_EXPECTED_MINUTES} min on 2 CPU cores "
            f"(--quick: ~6 min); interrupted, it resumes from {args.out}",
            flush=True,
        )
    workers = args.workers if args.workers is not None else os.cpu_count() or 1
    with _interruptible():
        try:
            report, findings = run_findings(args.out, quick=args.quick, workers=workers)
        except _Interrupted as stop:  # every finished run and trace is written by now
            print(f"trainenv findings: {INTERRUPTED}", file=sys.stderr)
            return 128 + stop.signum
    for claim, (_, verdict) in findings.verdicts().items():
        print(f"claim {claim}: {verdict}")
    _print_report(report)
    return 0


def _print_report(report: Path) -> None:
    """Where a report is: its Markdown and, beside it, the same as one page for a browser."""
    print(f"report: {report} (one page with the figures: {report.with_suffix('.html')})")


def _output_folder(out: Path) -> None:
    """Refuse an ``--out`` that names something other than a folder, before any work."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; give a folder")


def _range(intervention: Intervention) -> str:
    if intervention.low == intervention.high:
        return f"{intervention.low:g}"
    scale = "log" if intervention.log_scale else "lin"
    return f"[{intervention.low:g}, {intervention.high:g}] {scale}"


if __name__ == "__main__":
    sys.exit(main())
