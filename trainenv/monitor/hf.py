"""The monitor inside a transformers ``Trainer``: :class:`MonitorCallback`.

Telemetry per optimizer update (the channels of trainenv's LM trainer, less ``val_loss``):

=================  =========================================================================
``train_loss``     the model's ``loss`` output, mean over the update's micro-batches, nats
``grad_norm``      global L2 norm of the gradient before any clipping
``update_ratio``   L2 norm of the update's weight change over the weight norm
``weight_norm``    global L2 norm of the trainable weights
``max_logit``      largest logit magnitude of the update's last micro-batch
``token_entropy``  mean entropy of the next-token predictions, nats (on at most
                   :data:`ENTROPY_POSITIONS` positions of the last micro-batch, evenly spaced)
``lr``             learning rate in force (after any back-off)
=================  =========================================================================

Loss and logits come from a forward hook on the model (training mode only), so they need a
model whose output has ``loss`` and ``logits`` (every transformers causal LM). The norms come
from the ``on_pre_optimizer_step`` / ``on_optimizer_step`` hooks (the weight norms with
:class:`~trainenv.monitor.weights.WeightChange`: one flat copy of the weights, a few tensor
operations per update). Every scalar stays a tensor until ``on_optimizer_step``, which converts
them together: one device sync per update. The ``Trainer`` clips before any callback sees the
gradient, so the callback takes its clipping over for the run: it sets ``args.max_grad_norm``
to 0 at ``on_train_begin`` and clips to the same norm itself (restored at ``on_train_end``) —
the same computation, done where the norm before clipping can be read.
One process, no DeepSpeed/FSDP: a sharded gradient's norm is not the local one.

Alarms and actions go to ``trainer.log`` (so TensorBoard, W&B... show them) when the callback
was added with :meth:`MonitorCallback.attach`, and to the Parquet table when ``log_dir`` is set.

Acting (off unless a ``policy`` is given): ``lr_backoff`` scales every parameter group's
learning rate during the optimizer step (the scheduler's own value is restored right after,
so any scheduler composes), ``grad_clip`` clips tighter than the recipe, ``rollback`` restores
the weights and optimizer state of the last good in-memory checkpoint (not the data position
or the scheduler: training continues on new batches at the scheduled learning rate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from trainenv.monitor.actions import Policy
from trainenv.monitor.adapter import Watch
from trainenv.monitor.monitor import StabilityMonitor
from trainenv.monitor.weights import WeightChange
from trainenv.trainers.torch import clip_grad_norm, clone_tree

CHANNELS = ("train_loss", "grad_norm", "update_ratio", "weight_norm", "max_logit",
            "token_entropy", "lr")  # fmt: skip
ENTROPY_POSITIONS = 64  # enough for a mean entropy; a full-vocabulary softmax per token is not


class _HFRun:
    """The live run as the actor sees it: the model, its optimizer, the two knobs."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.knobs = {"lr_backoff": 1.0, "grad_clip": math.inf}

    def set_knob(self, name: str, value: float) -> None:
        self.knobs[name] = float(value)

    def snapshot(self) -> Any:
        assert self.model is not None and self.optimizer is not None
        return clone_tree((self.model.state_dict(), self.optimizer.state_dict()))

    def restore(self, snapshot: Any) -> None:
        assert self.model is not None and self.optimizer is not None
        weights, optimizer = clone_tree(snapshot)
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)


class MonitorCallback(TrainerCallback):
    """A transformers ``TrainerCallback`` that feeds a :class:`StabilityMonitor` every update.

    Args:
        monitor: The monitor; default ``StabilityMonitor(CHANNELS)`` (live calibration on the
            first 64 updates).
        policy: Acting is off unless given (see :mod:`trainenv.monitor.actions`).
        log_dir: Folder of the Parquet event table; ``run_id`` names the run in it.
        actor_kwargs: ``action_spec``, ``duration``, ``checkpoint_every`` of the actor.

    Attributes:
        CHANNELS: The channels recorded (the module's :data:`CHANNELS`).
        watch: The monitor, actor and event log (``watch.alarms``, ``watch.actions``).
        rows: Every update's telemetry row, when ``keep_rows`` (for calibration runs).
    """

    CHANNELS = CHANNELS

    def __init__(
        self,
        monitor: StabilityMonitor | None = None,
        policy: Policy | None = None,
        log_dir: str | Path | None = None,
        run_id: str = "run",
        keep_rows: bool = False,
        **actor_kwargs: Any,
    ) -> None:
        monitor = monitor or StabilityMonitor(CHANNELS)
        missing = [c for c in monitor.channels if c not in CHANNELS]
        if missing:
            raise ValueError(f"monitor: channels {missing} are not recorded here; use {CHANNELS}")
        self.watch = Watch(monitor, policy, log_dir, run_id, **actor_kwargs)
        self.rows: list[dict[str, float]] | None = [] if keep_rows else None
        self._run = _HFRun()
        self._trainer: Any = None
        self._pending: dict[str, float] = {}
        self._recipe_clip = math.inf
        self._losses: list[torch.Tensor] = []
        # The last training forward's (min logit, max logit, token entropy), 0-d tensors.
        self._logits: tuple[torch.Tensor, ...] | None = None
        self._scalars: list[torch.Tensor] = []  # this update's, converted in on_optimizer_step
        self._params: list[torch.Tensor] = []  # the trainable parameters
        self._weights: WeightChange | None = None  # their norm and the update's
        self._saved_lrs: list[float] = []
        self._hook: Any = None
        self._row: dict[str, float] = {}
        self._lr = math.nan

    def attach(self, trainer: Any) -> MonitorCallback:
        """Add to ``trainer`` and log alarms and actions through ``trainer.log``."""
        trainer.add_callback(self)
        self._trainer = trainer
        return self

    # -- transformers hooks ---------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, self._run.optimizer = kwargs["model"], kwargs["optimizer"]
        self._run.model = model
        self._recipe_clip = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
        args.max_grad_norm = 0.0  # the callback clips (same norm), after reading the norm
        self._hook = model.register_forward_hook(self._forward)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._weights = WeightChange(self._params)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        run = self._run
        clip = min(self._recipe_clip, run.knobs["grad_clip"])
        grad_norm = clip_grad_norm(self._params, clip)
        groups = run.optimizer.param_groups  # type: ignore[union-attr]
        self._saved_lrs = [group["lr"] for group in groups]
        for group in groups:
            group["lr"] = group["lr"] * run.knobs["lr_backoff"]
        self._lr = float(groups[0]["lr"])
        losses, self._losses = self._losses, []
        if not losses:
            loss = grad_norm.new_full((), math.nan)
        else:
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        logits = self._logits or (grad_norm.new_zeros(()),) * 3
        self._scalars = [loss, grad_norm, *logits]

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for group, lr in zip(self._run.optimizer.param_groups, self._saved_lrs):  # type: ignore[union-attr]
            group["lr"] = lr  # the scheduler's value: the back-off lasts one step at a time
        assert self._weights is not None
        change, weight_norm = self._weights.measure()
        # The update's one conversion to Python floats (one device sync on an accelerator).
        loss, grad_norm, low, high, entropy, change, weight_norm = torch.stack(
            [*self._scalars, change, weight_norm]
        ).tolist()
        self._row = {"train_loss": loss, "grad_norm": grad_norm,
                     "max_logit": max(abs(low), abs(high)), "token_entropy": entropy,
                     "lr": self._lr, "weight_norm": weight_norm,
                     "update_ratio": change / max(weight_norm, 1e-12)}  # fmt: skip

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        row = self._row
        if self.rows is not None:
            self.rows.append(dict(row))
        _, actions, logs = self.watch.after_update(row, self._run)
        if any(action.name == "rollback" for action in actions):
            assert self._weights is not None
            self._weights.reset()
        if logs and self._trainer is not None:
            self._trainer.log(logs)
        elif logs:
            self._pending.update(logs)  # into the next on_log's logs (later callbacks see them)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        if self._pending and isinstance(logs, dict):
            logs.update(self._pending)
            self._pending = {}

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        args.max_grad_norm = 0.0 if math.isinf(self._recipe_clip) else self._recipe_clip
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.watch.flush()

    # -- telemetry --------------------------------------------------------------------------------
    def _forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training:
            return  # evaluation passes are not updates
        loss, logits = getattr(output, "loss", None), getattr(output, "logits", None)
        if loss is None or logits is None:
            raise ValueError(
                "MonitorCallback needs a model whose output has loss and logits (pass labels)"
            )
        self._losses.append(loss.detach())
        # Detached: nothing below is recorded for autograd. Tensors, not floats: converted
        # with the update's other scalars in on_optimizer_step.
        flat = logits.detach().flatten(0, -2)
        sample = flat[:: max(1, len(flat) // ENTROPY_POSITIONS)].float()
        # softmax and log_softmax exponentiate in one vectorised pass each: cheaper than exp().
        probs, log_probs = torch.softmax(sample, dim=-1), torch.log_softmax(sample, dim=-1)
        entropy = torch.vdot(probs.view(-1), log_probs.view(-1)) / -len(sample)
        self._logits = (*torch.aminmax(flat), entropy)
