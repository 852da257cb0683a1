"""Batched pieces of a population: stacked linear layers, N Adams in one, per-member clipping
and the per-member parameter events.

Every stacked tensor has the member dimension first: a linear layer's weight is
``(N, in, out)``, its bias ``(N, 1, out)``. A computation on a subset of members (a *group*)
works on gathered copies and writes them back; ``members=None`` means every member in order,
working in place without copies (the common case).

Batch-invariance: only per-member operations appear here (batched matrix products, elementwise
ops, reductions within one member), so a member's numbers do not depend on the others. On CPU,
one thread, they are bitwise identical alone and in any batch, with one exception handled in
:func:`linear`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainenv.core.rng import torch_generator
from trainenv.trainers.torch import add_weight_noise, rescale_weights, reset_first_linear

Members = np.ndarray | None
"""Indices of the members a computation covers, or ``None`` for all of them in order."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight + bias`` per member: ``(G, B, in) x (G, in, out) + (G, 1, out)``."""
    if weight.shape[-1] == 1:
        # A one-member batched product with one output column takes a matrix-vector kernel
        # that rounds differently from the batched one (measured): multiply and sum instead.
        return (x * weight.transpose(1, 2)).sum(-1, keepdim=True) + bias
    return torch.baddbmm(bias, x, weight)


class _Tanh(torch.autograd.Function):
    """``tanh(x)`` computed as ``2 sigmoid(2x) - 1`` (within 2e-7 of ``torch.tanh``): torch's
    CPU ``tanh`` ran ~6x slower than its ``sigmoid`` on these machines (measured, float32)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """The hyperbolic tangent, differentiable (see :class:`_Tanh`)."""
    return _Tanh.apply(x)


def uniform_linear_(weight: torch.Tensor, bias: torch.Tensor, generator: torch.Generator) -> None:
    """``nn.Linear``'s default initialisation of one member's ``(in, out)`` weight and bias:
    uniform in ``+-1/sqrt(in)``."""
    bound = 1.0 / math.sqrt(weight.shape[0])
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)
        bias.uniform_(-bound, bound, generator=generator)


def orthogonal_linear_(
    weight: torch.Tensor, bias: torch.Tensor, gain: float, generator: torch.Generator
) -> None:
    """stable-baselines3's initialisation of one member's ``(in, out)`` weight: orthogonal with
    ``gain`` (drawn in torch's ``(out, in)`` layout), bias zero."""
    fresh = torch.empty(weight.shape[1], weight.shape[0])
    nn.init.orthogonal_(fresh, gain=gain, generator=generator)
    with torch.no_grad():
        weight.copy_(fresh.T)
        bias.zero_()


def leaves(params: Sequence[torch.Tensor], members: Members) -> list[torch.Tensor]:
    """Fresh autograd leaves of the ``members``' parameters (views when ``members`` is None)."""
    if members is None:
        return [p.detach().requires_grad_() for p in params]
    index = torch.from_numpy(members)
    return [p[index].requires_grad_() for p in params]


def member_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Shape ``(G,)``: each member's global L2 norm over ``tensors`` (each ``(G, ...)``)."""
    total = sum(t.detach().pow(2).flatten(1).sum(1) for t in tensors)
    return torch.as_tensor(total).sqrt()


def clip_(grads: Sequence[torch.Tensor], norms: torch.Tensor, max_norm: np.ndarray) -> None:
    """Scale each member's gradients to global norm ``max_norm[g]`` at most (inf: untouched),
    as ``torch.nn.utils.clip_grad_norm_`` does for one run."""
    limit = torch.from_numpy(max_norm).to(norms.dtype)
    coef = torch.where(torch.isinf(limit), 1.0, (limit / (norms + 1e-6)).clamp(max=1.0))
    with torch.no_grad():
        for g in grads:
            g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))


def groups(live: np.ndarray, keys: np.ndarray, n_members: int) -> list[tuple[Members, int]]:
    """The live members partitioned by ``keys`` (e.g. batch size: members of a group share
    every tensor shape): ``[(members, key), ...]``, with ``members=None`` when one group holds
    every member."""
    if len(live) == 0:
        return []
    if len(live) == n_members and (keys == keys[0]).all():
        return [(None, int(keys[0]))]
    return [(live[keys[live] == key], int(key)) for key in np.unique(keys[live])]


class StackedAdam:
    """N independent Adam optimizers over stacked parameters, as elementwise tensor ops.

    Each member has its own step count (bias correction) and learning rate; a member outside
    a step's ``members`` is untouched. The arithmetic is ``torch.optim.Adam``'s, in plain
    multiply/add/divide ops so that it rounds the same whatever the batch.

    Attributes:
        params: The stacked parameters (updated in place).
        exp_avg, exp_avg_sq: First and second moments, shaped like ``params``.
        steps: Shape ``(N,)``: each member's optimizer steps since its state was cleared.
    """

    def __init__(
        self, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:  # fmt: skip
        self.params = list(params)
        self.betas, self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = np.zeros(self.params[0].shape[0], dtype=np.int64)

    def step(self, members: Members, grads: Sequence[torch.Tensor], lr: np.ndarray) -> None:
        """One Adam step of ``members`` with their gradients (``(G, ...)`` each) and learning
        rates (shape ``(G,)``)."""
        beta1, beta2 = self.betas
        select = slice(None) if members is None else members
        steps = self.steps[select] + 1
        self.steps[select] = steps
        step_size = torch.from_numpy(lr / (1 - beta1**steps)).float()
        bias_sqrt = torch.from_numpy(np.sqrt(1 - beta2**steps)).float()
        index = None if members is None else torch.from_numpy(members)
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
                shape = (-1,) + (1,) * (p.dim() - 1)
                if index is None:
                    P, M, V = p, m, v
                else:
                    P, M, V = p[index], m[index], v[index]
                M.mul_(beta1).add_(g * (1 - beta1))
                V.mul_(beta2).add_(g * g * (1 - beta2))
                denom = (V.sqrt() / bias_sqrt.view(shape)).add_(self.eps)
                P.sub_(M / denom * step_size.view(shape))
                if index is not None:
                    p[index], m[index], v[index] = P, M, V

    def shrink(self, member: int, fraction: float) -> None:
        """Shrink one member's moments by ``fraction``; at 1.0 clear its state (step count
        too), as ``shrink_optimizer_state`` does for a torch optimizer."""
        with torch.no_grad():
            for moment in self.exp_avg + self.exp_avg_sq:
                if fraction >= 1.0:
                    moment[member].zero_()
                else:
                    moment[member].mul_(1.0 - fraction)
        if fraction >= 1.0:
            self.steps[member] = 0

    def member_state(self, member: int) -> dict[str, Any]:
        return {
            "exp_avg": [m[member].clone() for m in self.exp_avg],
            "exp_avg_sq": [v[member].clone() for v in self.exp_avg_sq],
            "steps": int(self.steps[member]),
        }

    def load_member_state(self, member: int, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for target, saved in zip(self.exp_avg, state["exp_avg"]):
                target[member] = saved
            for target, saved in zip(self.exp_avg_sq, state["exp_avg_sq"]):
                target[member] = saved
        self.steps[member] = state["steps"]


def apply_member_event(
    name: str,
    magnitude: float,
    member: int,
    weights: Sequence[torch.Tensor],
    optimizer: StackedAdam,
    first_layer: tuple[torch.Tensor, torch.Tensor],
    rng: np.random.Generator,
) -> None:
    """Apply ``name`` (``optimizer_reset``, ``weight_noise``, ``weight_rescale``,
    ``layer_reset``) to member ``member`` alone, drawing any noise from ``rng`` (the event's
    perturbation stream), as the single-run trainers do.

    ``weights`` are views of the member's weight tensors, one per tensor of the single-run
    model (weight noise scales with each tensor's RMS); ``first_layer`` views its first linear
    layer, the ``(in, out)`` weight and ``(1, out)`` bias that ``layer_reset`` moves toward a
    fresh ``nn.Linear`` initialisation.
    """
    if name == "optimizer_reset":
        optimizer.shrink(member, magnitude)
    elif name == "weight_noise":
        add_weight_noise(weights, magnitude, torch_generator(rng))
    elif name == "weight_rescale":
        rescale_weights(weights, magnitude)
    elif name == "layer_reset":
        weight, bias = first_layer
        layer = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            layer.weight.copy_(weight.T)
            layer.bias.copy_(bias[0])
            reset_first_linear(layer, magnitude, torch_generator(rng))
            weight.copy_(layer.weight.T)
            bias[0].copy_(layer.bias)
    else:
        raise ValueError(f"{name!r} is not a population parameter event")
