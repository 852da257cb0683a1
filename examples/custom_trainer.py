"""Your own training run as a trainenv environment: declare it, calibrate it, audit it, fork it.

A complete small trainer written from the public names of ``trainenv.trainers`` only: logistic
regression by mini-batch SGD on scikit-learn's bundled breast-cancer data (569 examples, 30
features, no download). It reuses the shared knobs (``LR_SCALE``, ``GRAD_CLIP``,
``BATCH_SHRINK``, ``INPUT_NOISE``, ``LABEL_NOISE``) and the torch events, so every registry
intervention acting through them (``lr_shock``, ``batch_shrink``, ``input_noise``,
``label_noise``, ``weight_noise``, ``grad_clip``...) applies to it unchanged.

Then, with the public API:

1. ``trainenv.calibrate`` fits a meta-state encoder (the observation) on unperturbed runs;
2. the env is registered with Gymnasium under an id of your own, so an ``AuditPlan`` can name
   it, and ``trainenv.audit.run_audit`` runs a tiny audit (serial backend: worker processes
   would not see a registration made in this script);
3. ``TrainEnv.fork`` copies a live run, and both copies continue identically.

Run: ``python examples/custom_trainer.py`` (about 10 s on one CPU thread, most of it imports).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import trainenv
from trainenv.audit import AuditPlan, format_summary, run_audit, summarize
from trainenv.trainers import (
    BATCH_SHRINK,
    GRAD_CLIP,
    INPUT_NOISE,
    LABEL_NOISE,
    LR_SCALE,
    TORCH_EVENTS,
    ChannelSpec,
    TorchTrainer,
    TrainerSpec,
    check_positive_int,
)

ENV_ID = "custom/Logistic-v0"


class LogisticTrainer(TorchTrainer):
    """Logistic regression by mini-batch SGD on the breast-cancer data (standardised).

    Args:
        lr: SGD learning rate (``lr_scale`` multiplies it).
        batch_size: Examples per update (``batch_shrink`` divides it).
    """

    def __init__(self, lr: float = 0.1, batch_size: int = 32) -> None:
        check_positive_int("batch_size", batch_size)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.batch_size = float(lr), int(batch_size)
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0)
        order = np.random.default_rng(0).permutation(len(y))  # a fixed split, not the seed's
        x_t, y_t = torch.as_tensor(x[order], dtype=torch.float32), torch.as_tensor(y[order])
        self.x_train, self.y_train = x_t[:450], y_t[:450].float()
        self.x_val, self.y_val = x_t[450:], y_t[450:].float()
        super().__init__()  # calls _declare

    def _declare(self) -> TrainerSpec:
        return TrainerSpec(
            channels=(
                ChannelSpec("train_loss", "binary cross-entropy of the mini-batch, nats"),
                ChannelSpec("grad_norm", "global L2 norm of the gradient before clipping"),
                ChannelSpec("update_ratio", "L2 norm of the weight update over the weight norm"),
                ChannelSpec("weight_norm", "global L2 norm of the weights"),
            ),
            knobs=(LR_SCALE, GRAD_CLIP, BATCH_SHRINK, INPUT_NOISE, LABEL_NOISE),
            events=TORCH_EVENTS,
            performance_range=(0.0, 1.0),  # validation accuracy (an untrained model's can be 0.1)
            rng_streams=("torch",),  # initialisation and batches; perturbations have their own
        )

    def _build(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = nn.Linear(self.x_train.shape[1], 1)  # initialised from the run's generator
        return model, torch.optim.SGD(model.parameters(), lr=self.lr)

    def _update(self, number: int) -> list[float]:
        knobs = self.knobs
        size = max(1, round(self.batch_size / knobs["batch_shrink"]))
        index = torch.randint(len(self.y_train), (size,))
        x, y = self.x_train[index], self.y_train[index]
        if knobs["input_noise"] > 0:  # perturbations draw from their own generators
            noise = self.perturbation_rng("input_noise").standard_normal(x.shape)
            x = x + knobs["input_noise"] * torch.as_tensor(noise, dtype=x.dtype)
        if knobs["label_noise"] > 0:
            flip = self.perturbation_rng("label_noise").random(size) < knobs["label_noise"]
            y = torch.where(torch.as_tensor(flip), 1.0 - y, y)
        logits = self._model()(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        grad_norm = self._optimizer_step(loss, self.lr * knobs["lr_scale"])
        weight_norm, update_ratio = self._weight_change()
        return [loss.item(), grad_norm, update_ratio, weight_norm]

    def evaluate(self) -> float:
        with torch.no_grad():
            predicted = self._model()(self.x_val).squeeze(1) > 0
        return float((predicted == self.y_val.bool()).float().mean())


SETTINGS: dict[str, Any] = {"k": 5, "max_steps": 20}  # 5 updates a step, 100 updates a run


def make_env(encoder: str | None = None, **kwargs: Any) -> trainenv.TrainEnv:
    """The Gymnasium entry point: the trainer in a ``TrainEnv``."""
    observation = "metastate" if encoder else "telemetry"
    return trainenv.TrainEnv(
        LogisticTrainer(), encoder=encoder, observation=observation, **{**SETTINGS, **kwargs}
    )


def main(out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    # 1. Calibrate: fit the meta-state encoder on unperturbed runs, save it next to the results.
    encoder = trainenv.calibrate(make_env(), seeds=3, window=8)
    encoder_path = str(out / "encoder.npz")
    encoder.save(encoder_path)

    # 2. Audit: register the env under your own id, then plan and run as for a built-in one.
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=make_env, kwargs={"encoder": encoder_path})
    plan = AuditPlan(
        env=ENV_ID,
        interventions=[
            {"name": "lr_shock", "magnitudes": [10.0, 1000.0]},
            {"name": "label_noise", "magnitudes": [0.3, 1.0]},
        ],
        onsets=[4],
        horizon=8,
        seeds=2,
        backend="serial",
    )
    store = run_audit(plan, out / "audit", progress=False)
    summary = summarize(store.runs(), n_boot=200)
    print(format_summary(summary))

    # 3. Fork: a copy of the live run continues exactly as the original does.
    env = gym.make(ENV_ID).unwrapped
    assert isinstance(env, trainenv.TrainEnv)
    env.reset(seed=7)
    env.intervene({"lr_shock": 10.0})  # interventions by name and magnitude
    twin = env.fork()
    original = [env.intervene({})[0] for _ in range(3)]
    forked = [twin.intervene({})[0] for _ in range(3)]
    same = all(np.array_equal(a, b) for a, b in zip(original, forked))
    print(f"fork continues identically: {same}")
    return {"encoder_components": encoder.n_components, "runs": len(store.runs()), "fork": same}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        main(Path(folder))
