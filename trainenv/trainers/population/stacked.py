"""Batched pieces of a population: stacked linear layers, N Adams in one, per-member clipping
and the per-member parameter events.

Every stacked tensor has the member dimension first: a linear layer's weight is
``(N, in, out)``, its bias ``(N, 1, out)``, both views of one packed ``(N, P)`` tensor (a
:class:`Layout`). A computation on a subset of members (a *group*) works on gathered copies and
writes them back; ``members=None`` means every member in order, working in place without copies
(the common case).

Batch-invariance: only per-member operations appear here (batched matrix products, elementwise
ops, reductions within one member), so a member's numbers do not depend on the others. On CPU,
one thread, they are bitwise identical alone and in any batch, with one exception handled in
:func:`matmul`.
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


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a @ b (+ bias)`` per member: ``(G, m, k) x (G, k, n)`` (+ a bias broadcast to
    ``(G, m, n)``), bitwise the same for a member whatever ``G``; written into ``out``
    (contiguous, ``(G, m, n)``) when given."""
    if b.shape[2] == 1:
        # A one-member batched product with one output column or row takes a matrix-vector
        # kernel that rounds differently from the batched one (measured): multiply and sum.
        y = (a * b.transpose(1, 2)).sum(-1, keepdim=True)
    elif a.shape[1] == 1:
        y = (a.transpose(1, 2) * b).sum(1, keepdim=True)
    elif bias is None:
        return torch.bmm(a, b) if out is None else torch.bmm(a, b, out=out)
    else:
        return torch.baddbmm(bias, a, b) if out is None else torch.baddbmm(bias, a, b, out=out)
    y = y if bias is None else y + bias
    return y if out is None else out.copy_(y)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight + bias`` per member: ``(G, B, in) x (G, in, out) + (G, 1, out)``."""
    return matmul(x, weight, bias)


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """``x`` replaced by its hyperbolic tangent, computed as ``2 sigmoid(2x) - 1`` (within 2e-7
    of ``torch.tanh``): torch's CPU ``tanh`` ran ~6x slower than its ``sigmoid`` on these
    machines (measured, float32). Its derivative is ``torch.ops.aten.tanh_backward``'s."""
    return torch.sigmoid(x.mul_(2), out=x).mul_(2).sub_(1)


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


class Layout:
    """One member's parameter tensors packed in one row of a ``(N, P)`` tensor.

    Packing makes the optimizer, the clipping and the norms a few operations on one tensor
    rather than a few per parameter tensor (a population update is mostly such small ops).

    Attributes:
        shapes: Each parameter tensor's shape for one member (e.g. ``(in, out)``, ``(1, out)``).
        size: ``P``, the parameter count of one member.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]]) -> None:
        self.shapes = [tuple(shape) for shape in shapes]
        sizes = [math.prod(shape) for shape in self.shapes]
        self._bounds = list(zip(np.cumsum([0, *sizes[:-1]]).tolist(), np.cumsum(sizes).tolist()))
        self.size = int(sum(sizes))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views ``(G, *shape)`` of the parameter tensors packed in ``flat`` ``(G, P)``."""
        return [flat[:, a:b].view(-1, *shape) for (a, b), shape in zip(self._bounds, self.shapes)]

    def pack(
        self, tensors: Sequence[torch.Tensor], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tensors ``(G, *shape)`` (e.g. per-tensor gradients) packed into ``(G, P)``,
        written into ``out`` when given."""
        rows = [t.reshape(t.shape[0], -1) for t in tensors]
        return torch.cat(rows, dim=1) if out is None else torch.cat(rows, dim=1, out=out)

    def member(self, flat: torch.Tensor, member: int) -> list[torch.Tensor]:
        """Views of member ``member``'s parameter tensors in ``flat`` ``(N, P)``."""
        return [flat[member, a:b].view(shape) for (a, b), shape in zip(self._bounds, self.shapes)]


def row_norms(flat: torch.Tensor) -> torch.Tensor:
    """Shape ``(G,)``: the L2 norm of each row of ``flat`` ``(G, P)`` (a member's global norm)."""
    return torch.linalg.vector_norm(flat.detach(), dim=1)


def clip_(grad: torch.Tensor, norms: torch.Tensor, max_norm: np.ndarray) -> None:
    """Scale each member's gradient row of ``grad`` ``(G, P)`` to global norm ``max_norm[g]``
    at most (inf: untouched), as ``torch.nn.utils.clip_grad_norm_`` does for one run."""
    if np.isinf(max_norm).all():  # the common case: no member clips, skip a pass over grad
        return
    limit = torch.from_numpy(max_norm).to(norms.dtype)
    coef = torch.where(torch.isinf(limit), 1.0, (limit / (norms + 1e-6)).clamp(max=1.0))
    grad.mul_(coef[:, None])


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
    """N independent Adam optimizers over packed weights ``(N, P)``.

    Each member has its own step count (bias correction) and learning rate; a member outside
    a step's ``members`` is untouched. The arithmetic is ``torch.optim.Adam(fused=True)``'s
    kernel, run on each member's row as a tensor of its own, so a member's numbers do not
    depend on the batch (one pass over the state instead of ten elementwise ops: ~2x faster
    here, measured).

    Attributes:
        weights: The packed weights (updated in place).
        grad: A gradient buffer shaped like ``weights``: a step of every member reads its rows
            through views made once.
        exp_avg, exp_avg_sq: First and second moments, shaped like ``weights``.
        steps: Shape ``(N,)``: each member's optimizer steps since its state was cleared
            (float32: a view of the kernel's step counters).
    """

    def __init__(
        self, weights: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.weights = weights
        self.betas, self.eps = betas, eps
        self.grad = torch.zeros_like(weights)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(weights), torch.zeros_like(weights)
        self._counts = torch.zeros(weights.shape[0])
        self.steps = self._counts.numpy()  # shares memory with the kernel's counters
        self._direction = torch.zeros_like(weights)  # each member's step at lr 1 (see step)
        # Row views of the kept buffers, made once: unbinding them per step costs ~N x 4 us.
        self._rows = [list(t.unbind()) for t in (self._direction, self.grad, self.exp_avg,
                                                 self.exp_avg_sq, self._counts)]  # fmt: skip

    def step(self, members: Members, grad: torch.Tensor, lr: np.ndarray) -> torch.Tensor:
        """One Adam step of ``members`` with their gradient rows ``(G, P)`` (for every member,
        pass ``grad``) and learning rates (shape ``(G,)``). Returns the L2 norm of each
        member's step, shape ``(G,)``."""
        beta1, beta2 = self.betas
        self.steps[slice(None) if members is None else members] += 1
        with torch.no_grad():
            if members is None and grad is self.grad:
                w, direction, rows, index = self.weights, self._direction, self._rows, None
            else:
                index = slice(None) if members is None else torch.from_numpy(members)
                w, m, v = self.weights[index], self.exp_avg[index], self.exp_avg_sq[index]
                direction = torch.empty_like(w)
                rows = [list(t.unbind()) for t in (direction, grad, m, v, self._counts[index])]
            direction.zero_()
            # The kernel takes one learning rate for all its tensors: step a zero "parameter"
            # at lr 1 (it becomes minus each member's Adam direction), then scale per member.
            directions, grads, exp_avgs, exp_avg_sqs, counts = rows
            torch._fused_adam_(
                directions, grads, exp_avgs, exp_avg_sqs, [], counts, lr=1.0, beta1=beta1,
                beta2=beta2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip
            scale = torch.from_numpy(lr).to(w.dtype)
            w.addcmul_(direction, scale[:, None])
            if index is not None:
                self.weights[index], self.exp_avg[index], self.exp_avg_sq[index] = w, m, v
            return torch.linalg.vector_norm(direction, dim=1) * scale

    def shrink(self, member: int, fraction: float) -> None:
        """Shrink one member's moments by ``fraction``; at 1.0 clear its state (step count
        too), as ``shrink_optimizer_state`` does for a torch optimizer."""
        with torch.no_grad():
            for moment in (self.exp_avg, self.exp_avg_sq):
                if fraction >= 1.0:
                    moment[member].zero_()
                else:
                    moment[member].mul_(1.0 - fraction)
        if fraction >= 1.0:
            self.steps[member] = 0

    def member_state(self, member: int) -> dict[str, Any]:
        return {
            "exp_avg": self.exp_avg[member].clone(),
            "exp_avg_sq": self.exp_avg_sq[member].clone(),
            "steps": int(self.steps[member]),
        }

    def load_member_state(self, member: int, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.exp_avg[member] = state["exp_avg"]
            self.exp_avg_sq[member] = state["exp_avg_sq"]
        self.steps[member] = int(state["steps"])


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
