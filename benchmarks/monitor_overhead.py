"""Monitor overhead: the transformers callback and StabilityMonitor against a tiny-GPT-2 update.

A tiny GPT-2 (trainenv's LM recipe: 2 layers, 64 wide, byte vocabulary of 256, 16 x 64 tokens
a batch, AdamW) trains in a plain torch loop, (a) bare — forward, backward, gradient clipping
at 1.0 as transformers' Trainer does, optimizer step — and (b) with ``MonitorCallback``'s hooks
called where the Trainer calls them (its forward hook, ``on_pre_optimizer_step``, which then
does the clipping, ``on_optimizer_step``, ``on_step_end``: telemetry, ``StabilityMonitor``,
checkpoints off). Rounds of (a) and (b) alternate so both see the same machine load.

Printed: the median update time of (a); the monitor's cost as a share of it, measured two ways
— the time spent inside the callback (summed with ``perf_counter``, the precise one), then
split by hook, and the difference (b) - (a) of the loops (noisy on a shared machine), both
less the clipping (a) does too; and ``StabilityMonitor.observe`` alone (on a constant row).
Target (issue 15): under 2 % of an update.

    python benchmarks/monitor_overhead.py [--rounds 7] [--updates 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainenv.monitor import MonitorCallback, StabilityMonitor


class Clock:
    """Sums the time spent in the wrapped callables."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return timed


HOOKS = {
    "_forward": "forward hook (loss, logit statistics)",
    "on_pre_optimizer_step": "pre-step (grad norm, less clipping)",
    "on_optimizer_step": "step (weight norms, the conversion)",
    "on_step_end": "step end (StabilityMonitor.observe)",
}  # the callback's hooks, in call order, and what each measures


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=40, help="updates per round and loop")
    options = parser.parse_args()
    torch.set_num_threads(1)
    batch = torch.randint(256, (16, 64))

    bare_model, bare_opt = build()
    bare_clock = Clock()  # the clipping the bare loop does (the callback does it in (b))
    clip = bare_clock.wrap(torch.nn.utils.clip_grad_norm_)

    def bare_update() -> None:
        loss = bare_model(input_ids=batch, labels=batch).loss
        loss.backward()
        clip(bare_model.parameters(), 1.0)
        bare_opt.step()
        bare_opt.zero_grad()

    model, opt = build()
    monitor = StabilityMonitor(MonitorCallback.CHANNELS, calibration_updates=16)
    callback = MonitorCallback(monitor)
    clocks = {name: Clock() for name in HOOKS}
    callback._forward = clocks["_forward"].wrap(callback._forward)
    hooks = {name: clocks[name].wrap(getattr(callback, name)) for name in list(HOOKS)[1:]}
    args, state, control = SimpleNamespace(max_grad_norm=1.0), SimpleNamespace(), None
    callback.on_train_begin(args, state, control, model=model, optimizer=opt)

    def monitored_update() -> None:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        hooks["on_pre_optimizer_step"](args, state, control)
        opt.step()
        hooks["on_optimizer_step"](args, state, control)
        opt.zero_grad()
        hooks["on_step_end"](args, state, control)

    for _ in range(20):  # warm-up, and the monitor's calibration updates
        bare_update()
        monitored_update()
    bare_times, inside, loop_diff = [], [], []
    per_hook: dict[str, list[float]] = {name: [] for name in HOOKS}
    for _ in range(options.rounds):
        bare_clock.total = 0.0
        start = time.perf_counter()
        for _ in range(options.updates):
            bare_update()
        bare = (time.perf_counter() - start) / options.updates
        for clock in clocks.values():
            clock.total = 0.0
        start = time.perf_counter()
        for _ in range(options.updates):
            monitored_update()
        monitored = (time.perf_counter() - start) / options.updates
        bare_times.append(bare)
        clocks["on_pre_optimizer_step"].total -= bare_clock.total  # the clipping (a) does too
        for name, clock in clocks.items():
            per_hook[name].append(clock.total / options.updates / bare)
        inside.append(sum(clock.total for clock in clocks.values()) / options.updates / bare)
        loop_diff.append(monitored / bare - 1)
    row = {c: 1.0 for c in MonitorCallback.CHANNELS}
    start = time.perf_counter()
    for _ in range(2000):
        monitor.observe(row)
    observe = (time.perf_counter() - start) / 2000
    bare = statistics.median(bare_times)
    print(f"tiny GPT-2 update (bare loop)          {bare * 1e3:8.2f} ms")
    inside_share, loop_share = statistics.median(inside), statistics.median(loop_diff)
    print(f"callback + monitor, time inside hooks  {inside_share:8.2%} of an update")
    for name, what in HOOKS.items():
        print(f"  {what:36s} {statistics.median(per_hook[name]):8.2%}")
    print(f"callback + monitor, loop difference    {loop_share:8.2%} of an update")
    print(f"StabilityMonitor.observe alone         {observe * 1e6:8.1f} us ({observe / bare:.2%})")


if __name__ == "__main__":
    main()
