"""Reference tables generated from the declared specs (interventions, telemetry, knobs).

``python -m trainenv.docs`` rewrites the generated sections of README.md in place; a test
checks that they are current, so the docs cannot drift from the code.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym

from trainenv.core import interventions as registry
from trainenv.core.interventions import ROLLBACK_EVENT
from trainenv.registration import ENTRY_POINTS, REGISTERED

if TYPE_CHECKING:
    from trainenv.env import TrainEnv
    from trainenv.trainers.base import Trainer

README = Path(__file__).resolve().parent.parent / "README.md"


def interventions_table() -> str:
    """Markdown table of the intervention registry, and which registered envs support each."""
    support = {env_id: set(_env_targets(env_id)) for env_id in ENTRY_POINTS}
    short = {env_id: env_id.split("/")[-1].removesuffix("-v0") for env_id in ENTRY_POINTS}
    lines = [
        "| intervention | dimension | role | magnitude | steps | what it does (acts through) | "
        + " | ".join(short.values()) + " |",
        "|---" * (6 + len(short)) + "|",
    ]  # fmt: skip
    for i in registry.all_interventions():
        scale = "log" if i.log_scale else "linear"
        magnitude = f"{i.low:g}" if i.low == i.high else f"{i.low:g} – {i.high:g} ({scale})"
        through = f"knob `{i.knob}`" if i.knob else f"event `{i.event}`"
        marks = " | ".join("✓" if i.target in support[e] else "" for e in ENTRY_POINTS)
        lines.append(
            f"| `{i.name}` | {i.dimension.value} | {i.role.value} | {magnitude} | {i.duration} | "
            f"{i.description} ({through}) | {marks} |"
        )
    return "\n".join(lines)


def channels_table() -> str:
    """Markdown list of each registered environment's telemetry channels."""
    lines = []
    for env_id in ENTRY_POINTS:
        trainer = _trainer(env_id)
        lines.append(f"**`{env_id}`** ({type(trainer).__name__}):\n")
        lines += [f"- `{c.name}`: {c.description}" for c in trainer.channels]
        lines.append("")
    return "\n".join(lines).rstrip()


SECTIONS = {"interventions": interventions_table, "channels": channels_table}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current rendering."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        section = pattern.search(text)
        if section is None:
            raise ValueError(f"README has no <!-- {name}:begin/end --> section")
        text = f"{text[: section.end(1)]}{make()}\n{text[section.start(2) :]}"
    return text


@functools.cache
def _trainer(env_id: str) -> Trainer:
    env: TrainEnv = gym.make(env_id, observation="telemetry").unwrapped  # type: ignore[assignment]
    return env.trainer


def _env_targets(env_id: str) -> tuple[str, ...]:
    return (*REGISTERED[env_id].targets, ROLLBACK_EVENT)


def main() -> None:
    import trainenv  # noqa: F401  (registers the environments)

    README.write_text(render(README.read_text()))
    print(f"updated generated sections of {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
