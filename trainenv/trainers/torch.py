"""The torch trainer base: a run of one torch module trained by one torch optimizer.

:class:`TorchTrainer` holds what such runs share: the build at ``reset``, the weight-norm and
update-ratio bookkeeping, the optimizer step with the ``grad_clip`` knob, snapshots of the
module's and optimizer's state dicts, and the events every torch run supports. The functions
below it are the torch operations those events and other trainers (stable-baselines3) use.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from trainenv.core.rng import torch_generator
from trainenv.trainers.base import Trainer

TORCH_EVENTS = ("optimizer_reset", "weight_noise", "weight_rescale", "layer_reset")
"""The events :class:`TorchTrainer` implements; declare those the run supports."""


class TorchTrainer(Trainer):
    """A run of one torch module trained by one torch optimizer.

    A subclass implements :meth:`_declare`, :meth:`_build` (a fresh module and its optimizer,
    called by ``reset`` inside the run's own RNG states), :meth:`_update` (one update; it
    trains with :meth:`_optimizer_step` and measures with :meth:`_weight_change`) and
    ``evaluate``. For state beyond the module and the optimizer (data position, generators,
    cached validation results) it extends ``_reset``, ``_state`` and ``_load_state``, calling
    ``super()``; for events beyond :data:`TORCH_EVENTS` it extends ``_apply_event``.

    ``_build`` builds on the CPU, from the run's CPU generator (the same initial weights on
    every device); ``reset`` moves the module to :attr:`device`. Batches the subclass makes
    must be put on :attr:`device`. On CUDA the run also owns the CUDA generators (its
    ``rng_streams`` gain ``"cuda"``), so dropout on the device replays and forks exactly.

    Args:
        device: Where the run trains: ``"cpu"`` (default) or ``"cuda"``/``"cuda:N"`` where
            CUDA is available (:func:`check_device`).
        num_threads: Torch threads for the run's work.

    Attributes:
        model: The module being trained (``None`` before the first ``reset``).
        optimizer: Its optimizer (``None`` before the first ``reset``).
        device: The ``torch.device`` the run trains on.
    """

    def __init__(self, *, device: str | torch.device = "cpu", num_threads: int | None = 1) -> None:
        self.device = check_device(device)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        super().__init__(num_threads=num_threads)
        streams = device_streams(self.spec.rng_streams, self.device)
        self.spec = dataclasses.replace(self.spec, rng_streams=streams)

    @abc.abstractmethod
    def _build(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A freshly initialised module and the optimizer that trains it."""

    def _reset(self, seed: int) -> None:
        self.model, self.optimizer = self._build(seed)
        # The optimizer has no state yet, and .to() keeps the Parameter objects it holds.
        self.model.to(self.device)
        self._params = list(self.model.parameters())
        self._weights = parameters_to_vector(self._params).detach()

    # -- one update ---------------------------------------------------------------------------
    def _optimizer_step(self, objective: torch.Tensor, lr: float) -> float:
        """One optimizer step on ``objective`` at learning rate ``lr``; returns the global
        gradient L2 norm before clipping (to the ``grad_clip`` knob, where declared)."""
        optimizer = self._optimizer()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        grad_norm = clip_and_measure(self._params, self._knobs.get("grad_clip", math.inf))
        self._adjust_gradients()
        optimizer.step()
        return grad_norm

    def _adjust_gradients(self) -> None:
        """Change the clipped gradients before the optimizer steps (e.g. add noise); a no-op."""

    def _weight_change(self) -> tuple[float, float]:
        """``(weight_norm, update_ratio)``: the global L2 norm of the weights, and the norm of
        their change since the last call (or reset, restore, event) over it."""
        previous, self._weights = self._weights, parameters_to_vector(self._params).detach()
        weight_norm = float(self._weights.norm())
        return weight_norm, float((self._weights - previous).norm()) / max(weight_norm, 1e-12)

    # -- snapshots and events -----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": clone_tree(self._model().state_dict()),
            "optimizer": clone_tree(self._optimizer().state_dict()),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._model().load_state_dict(state["model"])
        # load_state_dict keeps the given tensors: copy so the snapshot stays intact.
        self._optimizer().load_state_dict(clone_tree(state["optimizer"]))
        self._weights = parameters_to_vector(self._params).detach()

    def apply_event(self, name: str, magnitude: float) -> None:
        super().apply_event(name, magnitude)
        self._weights = parameters_to_vector(self._params).detach()  # the next ratio's base

    def _apply_event(self, name: str, magnitude: float) -> None:
        rng = self.perturbation_rng(name)
        if name == "layer_reset":
            reset_first_linear(self._model(), magnitude, torch_generator(rng))
        else:
            apply_parameter_event(name, magnitude, [self._optimizer()], self._params, rng)

    def _model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(seed) first")
        return self.model

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(seed) first")
        return self.optimizer


# -- devices -----------------------------------------------------------------------------------
def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``: ``"cpu"``, or ``"cuda"``/``"cuda:N"`` on a machine
    with that CUDA device; a ``ValueError`` naming the field otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: CUDA is not available here (torch.cuda.is_available() "
                "is False); use device='cpu'"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    return parsed


def device_streams(streams: Sequence[str], device: torch.device) -> tuple[str, ...]:
    """The RNG streams a run on ``device`` owns: ``streams``, plus ``"cuda"`` on CUDA."""
    if device.type == "cuda" and "cuda" not in streams:
        return (*streams, "cuda")
    return tuple(streams)


@contextlib.contextmanager
def isolated_global_rng() -> Iterator[None]:
    """Draws from the global torch generators inside the block leave them as they were,
    CUDA's included where CUDA is in use (``torch.manual_seed`` reseeds those too)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


# -- torch operations shared by the trainers ----------------------------------------------------
def clone_tree(tree: Any) -> Any:
    """Copy nested dicts/lists/tuples, cloning tensors and numpy arrays (leaves otherwise shared).

    A fast ``deepcopy`` for state dicts: ``copy.deepcopy`` costs ~20 us per tensor in Python.
    """
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, np.ndarray):
        return tree.copy()
    if isinstance(tree, dict):
        return {key: clone_tree(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_tree(value) for value in tree)
    return tree


def clip_and_measure(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (none at inf); return the norm before."""
    return float(clip_grad_norm(params, max_norm))


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """:func:`clip_and_measure` returning the norm as a 0-d tensor on the gradients' device,
    unconverted (no device sync: callers gather several scalars and convert them once)."""
    if math.isinf(max_norm):  # clip_grad_norm_ would still multiply every gradient by 1
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return params[0].new_zeros(()) if params else torch.zeros(())
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def apply_parameter_event(
    name: str,
    magnitude: float,
    optimizers: Iterable[torch.optim.Optimizer],
    params: Sequence[torch.Tensor],
    rng: np.random.Generator,
) -> None:
    """Apply ``name``, one of the events every torch trainer has (``optimizer_reset``,
    ``weight_noise``, ``weight_rescale``), to ``optimizers``/``params``, drawing any noise
    from ``rng`` (the event's perturbation stream)."""
    if name == "optimizer_reset":
        for optimizer in optimizers:
            shrink_optimizer_state(optimizer, magnitude)
    elif name == "weight_noise":
        add_weight_noise(params, magnitude, torch_generator(rng))
    elif name == "weight_rescale":
        rescale_weights(params, magnitude)
    else:
        raise ValueError(f"{name!r} is not a shared parameter event")


def add_weight_noise(params: Iterable[torch.Tensor], rel_std: float, rng: torch.Generator) -> None:
    """Add Gaussian noise with std ``rel_std`` times each tensor's RMS."""
    with torch.no_grad():
        for p in params:
            rms = p.pow(2).mean().sqrt()
            noise = torch.randn(p.shape, generator=rng, dtype=p.dtype).to(p.device)
            p.add_(noise * rel_std * rms)


def rescale_weights(params: Iterable[torch.Tensor], factor: float) -> None:
    with torch.no_grad():
        for p in params:
            p.mul_(factor)


def shrink_optimizer_state(optimizer: torch.optim.Optimizer, fraction: float) -> None:
    """Shrink the optimizer's moment estimates by ``fraction``; at 1.0 clear its state."""
    if fraction >= 1.0:
        optimizer.state.clear()
        return
    with torch.no_grad():
        for state in optimizer.state.values():
            for key, value in state.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.mul_(1.0 - fraction)


def reset_first_linear(module: torch.nn.Module, mix: float, rng: torch.Generator) -> None:
    """Move the first ``nn.Linear`` of ``module`` a fraction ``mix`` toward a fresh init.

    The fresh initialisation draws from ``rng`` (not the run's training generator), so the
    run's own randomness is untouched.
    """
    layer = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    fresh = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with isolated_global_rng():
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        fresh.reset_parameters()
    with torch.no_grad():
        layer.weight.lerp_(fresh.weight.to(layer.weight), mix)  # its dtype and device
        if layer.bias is not None:
            layer.bias.lerp_(fresh.bias.to(layer.bias), mix)


def all_finite(params: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)
