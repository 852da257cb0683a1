"""A fast supervised run: an MLP classifier on scikit-learn's bundled digits data.

It exists so that most tests and examples run in seconds: one update is one mini-batch Adam
step on a ~9k-parameter MLP (well under a millisecond on one CPU thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainenv.core import knobs as K
from trainenv.core.knobs import KnobSpec
from trainenv.core.rng import perturbation_generator
from trainenv.core.telemetry import ChannelSpec
from trainenv.trainers.base import TrainerSpec, check_positive_int, torch_threads
from trainenv.trainers.torch import TORCH_EVENTS, TorchTrainer

GRAD_NOISE = KnobSpec(
    "grad_noise", 0.0, 0.0, 1e3, "std of Gaussian gradient noise, relative to the gradient RMS"
)
MAX_DROPOUT = 0.95
"""The largest dropout probability (the knob's and the recipe's)."""
CHANNELS = (
    ChannelSpec("train_loss", "cross-entropy of the update's mini-batch, nats"),
    ChannelSpec(
        "val_loss",
        "cross-entropy on the validation split at the latest pass, nats",
        role="performance",
    ),
    ChannelSpec(
        "val_accuracy", "accuracy on the validation split at the latest pass", role="performance"
    ),
    ChannelSpec("grad_norm", "global L2 norm of the gradient before clipping"),
    ChannelSpec("update_ratio", "L2 norm of the weight update over the weight norm"),
    ChannelSpec("weight_norm", "global L2 norm of the weights"),
    ChannelSpec("lr", "learning rate in force", role="knob"),
)


class SupervisedTrainer(TorchTrainer):
    """Mini-batch Adam on an MLP classifier over scikit-learn's digits (8x8 images, 10 classes).

    Args:
        hidden: Widths of the hidden layers.
        lr: Adam learning rate (the recipe's; knobs scale it).
        batch_size: Examples per update (the recipe's; ``batch_shrink`` divides it).
        eval_every: Updates between validation passes; performance and the validation
            channels hold the latest pass in between.
        val_fraction: Share of the data held out for validation (a fixed split, the same for
            every seed: the seed varies the run, not the task).
        dropout: Probability of zeroing each hidden activation in training (inverted dropout,
            masks from the run's ``dropout`` perturbation stream; never at validation). The
            ``dropout`` knob's default; 0 is the registered recipe.
        device: Where the run trains (``"cpu"``, ``"cuda"``...; see :class:`TorchTrainer`).
        num_threads: Torch threads for the run's work (``None``: the process's setting).
    """

    def __init__(
        self,
        hidden: Sequence[int] = (64, 64),
        lr: float = 1e-3,
        batch_size: int = 32,
        eval_every: int = 10,
        val_fraction: float = 0.2,
        dropout: float = 0.0,
        *,
        device: str | torch.device = "cpu",
        num_threads: int | None = 1,
    ) -> None:
        check_positive_int("batch_size", batch_size)
        check_positive_int("eval_every", eval_every)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of widths >= 1, got {hidden}")
        if not 0 <= dropout <= MAX_DROPOUT:
            raise ValueError(f"dropout must be in [0, {MAX_DROPOUT}], got {dropout}")
        self.hidden, self.dropout = tuple(int(h) for h in hidden), float(dropout)
        self.lr, self.batch_size, self.eval_every = float(lr), int(batch_size), int(eval_every)
        super().__init__(device=device, num_threads=num_threads)
        # Under the run's thread count, like the rest of its torch work: a multi-threaded op
        # in a worker forked after the parent ran a parallel region deadlocks in GNU OpenMP
        # (gymnasium's make_vec(..., vectorization_mode="async") forks such workers).
        with torch_threads(self.num_threads):
            self._data = _DigitsData(val_fraction, self.device)

    def _declare(self) -> TrainerSpec:
        description = "probability of zeroing each hidden activation in training"
        dropout = KnobSpec("dropout", self.dropout, 0.0, MAX_DROPOUT, description)
        return TrainerSpec(
            channels=CHANNELS,
            knobs=(
                K.LR_SCALE,
                K.LR_BACKOFF,
                K.GRAD_CLIP,
                K.BATCH_SHRINK,
                K.INPUT_NOISE,
                K.INPUT_SHIFT,
                K.LABEL_NOISE,
                GRAD_NOISE,
                dropout,
            ),
            events=TORCH_EVENTS,
            performance_range=(0.1, 1.0),  # chance (10 classes) to perfect accuracy
            rng_streams=("torch",),  # initialisation and data order; perturbations have their own
        )

    # -- protocol -----------------------------------------------------------------------------
    def _build(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        widths = (self._data.x_train.shape[1], *self.hidden)
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(widths[-1], self._data.n_classes))
        # fused: one kernel for the whole step, ~30 % faster on CPU for small models.
        return model, torch.optim.Adam(model.parameters(), lr=self.lr, fused=True)

    def _reset(self, seed: int) -> None:
        super()._reset(seed)
        self._perm = torch.randperm(len(self._data.y_train))
        self._cursor = 0
        # One +-1 direction per run, so a shift is a consistent covariate shift.
        signs = perturbation_generator(seed, "input_shift_direction").choice(
            [-1.0, 1.0], self._data.dim
        )
        self._shift_direction = torch.from_numpy(signs).to(self.device, torch.float32)
        self._validate()

    def evaluate(self) -> float:
        return self._val_accuracy

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "perm": self._perm.clone(),
            "cursor": self._cursor,
            "validation": (self._val_loss, self._val_accuracy),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._perm, self._cursor = state["perm"].clone(), state["cursor"]
        self._val_loss, self._val_accuracy = state["validation"]

    def _shared(self) -> Iterable[object]:
        return (self._data,)

    # -- one update ---------------------------------------------------------------------------
    def _update(self, number: int) -> list[float]:
        """Update number ``number`` (1-based) of the run; returns its telemetry row."""
        knobs = self._knobs
        x, y = self._next_batch(max(1, round(self.batch_size / knobs["batch_shrink"])))
        x, y = self._perturb_batch(x, y)
        lr = self.lr * knobs["lr_scale"] * knobs["lr_backoff"]
        loss = nn.functional.cross_entropy(self._training_logits(x), y)
        grad_norm = self._optimizer_step(loss, lr)
        weight_norm, update_ratio = self._weight_change()
        if number % self.eval_every == 0:
            self._validate()
        return [
            loss.item(), self._val_loss, self._val_accuracy, grad_norm, update_ratio,
            weight_norm, lr,
        ]  # fmt: skip

    def _training_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits on ``x`` ``(B, dim)``, its hidden activations dropped out while
        the ``dropout`` knob is set."""
        p = self._knobs["dropout"]
        if p <= 0:
            return self._model()(x)
        drawn = dropout_masks(self.perturbation_rng("dropout"), p, len(x), self.hidden)
        masks = iter(torch.from_numpy(drawn).to(self.device).split(self.hidden, dim=1))
        for layer in self._model().children():  # the nn.Sequential's layers, in order
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = x * next(masks)
        return x

    def _next_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cursor + size > len(self._perm):
            self._perm = torch.randperm(len(self._data.y_train))
            self._cursor = 0
        idx = self._perm[self._cursor : self._cursor + size]
        self._cursor += size
        return self._data.x_train[idx], self._data.y_train[idx]

    def _perturb_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        knobs = self._knobs
        if knobs["input_noise"] > 0:
            noise = self.perturbation_rng("input_noise").standard_normal(x.shape)
            x = x + knobs["input_noise"] * torch.from_numpy(noise).to(x)
        if knobs["input_shift"] > 0:
            x = x + knobs["input_shift"] * self._shift_direction
        if knobs["label_noise"] > 0:
            rng = self.perturbation_rng("label_noise")
            flip = torch.from_numpy(rng.random(len(y)) < knobs["label_noise"]).to(y.device)
            random_labels = torch.from_numpy(rng.integers(self._data.n_classes, size=len(y)))
            random_labels = random_labels.to(y.device)
            y = torch.where(flip, random_labels, y)
        return x, y

    def _adjust_gradients(self) -> None:
        """Gaussian gradient noise while ``grad_noise`` is set (std relative to each
        gradient tensor's RMS)."""
        rel_std = self._knobs["grad_noise"]
        if rel_std <= 0:
            return
        rng = self.perturbation_rng("grad_noise")
        for p in self._params:
            if p.grad is not None:
                rms = p.grad.pow(2).mean().sqrt()
                noise = torch.from_numpy(rng.standard_normal(p.shape)).to(p.grad)
                p.grad.add_(noise * rel_std * rms)

    def _validate(self) -> None:
        with torch.no_grad():
            logits = self._model()(self._data.x_val)
            self._val_loss = float(nn.functional.cross_entropy(logits, self._data.y_val))
            self._val_accuracy = float((logits.argmax(1) == self._data.y_val).float().mean())


def dropout_masks(
    rng: np.random.Generator, p: float, batch: int, widths: Sequence[int]
) -> np.ndarray:
    """One update's inverted-dropout masks of hidden layers ``widths`` on ``batch`` examples,
    drawn from ``rng``: float32 ``(batch, sum(widths))``, each entry 0 with probability ``p``,
    else ``1 / (1 - p)``; layer ``l``'s mask is its ``widths[l]`` columns in order."""
    keep = rng.random((batch, sum(widths)), dtype=np.float32) >= p
    return keep * np.float32(1.0 / (1.0 - p))


class _DigitsData:
    """The digits split, standardised per feature with training statistics, on ``device``
    (shared by forks)."""

    def __init__(self, val_fraction: float, device: torch.device) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        x, y = load_digits(return_X_y=True)
        x_tr, x_va, y_tr, y_va = train_test_split(
            x, y, test_size=val_fraction, random_state=0, stratify=y
        )
        scaler = StandardScaler().fit(x_tr)
        self.x_train = torch.as_tensor(scaler.transform(x_tr), dtype=torch.float32, device=device)
        self.x_val = torch.as_tensor(scaler.transform(x_va), dtype=torch.float32, device=device)
        self.y_train = torch.as_tensor(y_tr, dtype=torch.long, device=device)
        self.y_val = torch.as_tensor(y_va, dtype=torch.long, device=device)
        self.dim = self.x_train.shape[1]
        self.n_classes = int(y.max()) + 1
