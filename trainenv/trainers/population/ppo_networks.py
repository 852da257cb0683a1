"""The policy and value networks of a PPO population, batched: the forward pass and a
hand-written gradient of the clipped-surrogate loss, computed in reused buffers.

The networks are stable-baselines3's ``MlpPolicy`` for a discrete action space: separate
two-layer tanh policy and value networks of one width, a linear policy head (action logits)
and a linear value head. Both networks are stacked along a second axis (0: policy, 1: value),
so each hidden layer of both is one batched product, and both heads are one product too:
``[w_pi | w_v]`` transposed, ``(actions + 1, hidden)``, times the two networks' last activations
of a member, ``(hidden, 2B)``; the value row's policy columns and the logit rows' value columns
are computed and ignored (their gradient is an exact zero). Outputs come classes first,
``(actions + 1, 2B)``: the products with a long last dimension run ~5x faster than with an
output or contraction dimension of 3 (measured), and a softmax over dim 1 runs vectorised.

Why by hand: autograd's bookkeeping and its fresh ``(2G, B, hidden)`` activation and gradient
tensors (~4 MB each at G=32, B=256, which glibc returns to the system and faults back in on
every step) cost more than the products themselves (measured). Here every large tensor is a
buffer kept per shape and overwritten in place; members go through in chunks of
:data:`CHUNK`, which bounds the buffers' size.

Batch-invariance: every operation is per member (:func:`~.stacked.matmul`, elementwise ops,
reductions within a member), so a member's numbers do not depend on the others or the chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trainenv.trainers.population.stacked import Layout, matmul, tanh_

CHUNK = 16
"""Members computed together. Chunks of 4 or 8 (buffers of 0.25 / 0.5 MB, cache-sized) ran
slower than 16 here: the per-chunk work of the small tensors outweighed the cache (measured,
CPU time under load, noisy: 16 and the whole of N=32 were within noise of each other)."""


class Prepared(NamedTuple):
    """A group's weights laid out for the batched products (copies, ``G`` members):
    ``w1`` ``(2G, obs, hidden)``, ``b1`` ``(2G, 1, hidden)``, ``w2`` ``(2G, hidden, hidden)``,
    ``b2`` ``(2G, 1, hidden)``, ``heads`` ``(G, actions + 1, hidden)`` (``[w_pi | w_v]``
    transposed), ``head_bias`` ``(G, actions + 1, 1)``."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    heads: torch.Tensor
    head_bias: torch.Tensor

    def rows(self, start: int, stop: int) -> Prepared:
        """Members ``start:stop`` of the group (views)."""
        w1, b1, w2, b2 = (t[2 * start : 2 * stop] for t in (self.w1, self.b1, self.w2, self.b2))
        return Prepared(w1, b1, w2, b2, self.heads[start:stop], self.head_bias[start:stop])


class Minibatch(NamedTuple):
    """A group's minibatch, ``B`` samples per member: ``obs`` ``(G, B, obs)``, ``actions``
    ``(G, B)`` (int64), ``log_prob`` (at collection), ``advantages`` (normalised if the recipe
    says so), ``returns``, all ``(G, B)``."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class Losses(NamedTuple):
    """Each member's numbers on one minibatch, all ``(G,)``: the surrogate (``pg``), value
    (``vf``) and entropy (``ent``, minus the mean entropy) losses, the total ``loss``, the
    clip fraction and the approximate KL divergence from the collecting policy."""

    pg: torch.Tensor
    vf: torch.Tensor
    ent: torch.Tensor
    loss: torch.Tensor
    clip: torch.Tensor
    kl: torch.Tensor


class PPONetworks:
    """The networks of a population whose members' parameters are packed by ``layout``:
    ``w1`` ``(2, obs, hidden)``, ``b1`` ``(2, 1, hidden)``, ``w2`` ``(2, hidden, hidden)``,
    ``b2`` ``(2, 1, hidden)``, ``w_pi`` ``(hidden, actions)``, ``b_pi`` ``(1, actions)``,
    ``w_v`` ``(hidden, 1)``, ``b_v`` ``(1, 1)``.

    Args:
        layout: The packing of one member's parameters.
        clip_range: PPO's ratio clipping.
        vf_coef: Weight of the value loss.
    """

    def __init__(self, layout: Layout, clip_range: float, vf_coef: float) -> None:
        self.layout, self.clip_range, self.vf_coef = layout, clip_range, vf_coef
        (_, self.n_obs, self.hidden), _, _, _, (_, self.n_actions), *_ = layout.shapes
        self._buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def prepare(self, weights: torch.Tensor) -> Prepared:
        """The packed weights ``(G, P)`` of a group laid out for :meth:`forward`."""
        g = weights.shape[0]
        w1, b1, w2, b2, w_pi, b_pi, w_v, b_v = self.layout.split(weights)
        return Prepared(
            w1.reshape(2 * g, *w1.shape[2:]), b1.reshape(2 * g, *b1.shape[2:]),
            w2.reshape(2 * g, *w2.shape[2:]), b2.reshape(2 * g, *b2.shape[2:]),
            torch.cat([w_pi, w_v], 2).transpose(1, 2).contiguous(),
            torch.cat([b_pi, b_v], 2).transpose(1, 2).contiguous(),
        )  # fmt: skip

    def forward(self, weights: Prepared, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits ``(G, B, actions)`` and values ``(G, B)`` of observations ``(G, B, obs)``.

        The results view buffers that the next call overwrites: use or copy them first."""
        out = self._forward(weights, obs)
        b = obs.shape[1]
        return out[:, : self.n_actions, :b].transpose(1, 2), out[:, self.n_actions, b:]

    def loss_and_grad(
        self, weights: Prepared, batch: Minibatch, ent_coef: torch.Tensor, grad: torch.Tensor
    ) -> Losses:
        """Each member's PPO loss on its minibatch and its gradient, written into its row of
        ``grad`` ``(G, P)``; ``ent_coef`` ``(G,)`` is each member's entropy coefficient.

        The loss is stable-baselines3's: ``-mean(min(A r, A clip(r))) + ent_coef * (-mean
        entropy) + vf_coef * mean((R - V)^2)`` with ``r`` the probability ratio."""
        g = batch.obs.shape[0]
        parts = [self._chunk(weights.rows(a, min(a + CHUNK, g)),
                             Minibatch(*(t[a : a + CHUNK] for t in batch)),
                             ent_coef[a : a + CHUNK], grad[a : a + CHUNK])
                 for a in range(0, g, CHUNK)]  # fmt: skip
        return parts[0] if len(parts) == 1 else Losses(*(torch.cat(t) for t in zip(*parts)))

    # -- internals ----------------------------------------------------------------------------
    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor kept for ``name`` and ``shape`` (zero-filled when first made)."""
        key = (name, shape)
        if key not in self._buffers:
            self._buffers[key] = torch.zeros(shape)
        return self._buffers[key]

    def _forward(self, weights: Prepared, obs: torch.Tensor) -> torch.Tensor:
        """Both networks on ``obs`` ``(G, B, obs)``: the heads' output ``(G, actions + 1, 2B)``
        (columns ``:B`` from the policy network, ``B:`` from the value network), in a buffer;
        the inputs and hidden activations stay in the buffers ``x``, ``h1``, ``h2`` for a
        backward pass."""
        g, b = obs.shape[:2]
        x = self._buffer("x", (2 * g, b, self.n_obs))
        x.view(g, 2, b, self.n_obs).copy_(obs.unsqueeze(1))  # both networks read the input
        h1 = tanh_(
            matmul(x, weights.w1, weights.b1, out=self._buffer("h1", (2 * g, b, self.hidden)))
        )
        h2 = tanh_(matmul(h1, weights.w2, weights.b2, out=self._buffer("h2", h1.shape)))
        out = self._buffer("out", (g, self.n_actions + 1, 2 * b))
        h2 = h2.view(g, 2 * b, self.hidden).transpose(1, 2)
        return matmul(weights.heads, h2, weights.head_bias, out=out)

    def _chunk(
        self, weights: Prepared, batch: Minibatch, ent_coef: torch.Tensor, grad: torch.Tensor
    ) -> Losses:
        """:meth:`loss_and_grad` of one chunk of members."""
        g, b = batch.actions.shape
        a = self.n_actions
        out = self._forward(weights, batch.obs)
        logits, values = out[:, :a, :b], out[:, a, b:]  # logits (G, actions, B)
        log_probs = torch.log_softmax(logits, 1)
        probs = log_probs.exp()
        actions = batch.actions.unsqueeze(1)
        log_ratio = log_probs.gather(1, actions).squeeze(1) - batch.log_prob
        ratio = log_ratio.exp()
        advantages = batch.advantages
        surrogate = advantages * ratio
        clipped = advantages * ratio.clamp(1 - self.clip_range, 1 + self.clip_range)
        entropy = -(probs * log_probs).sum(1)
        error = values - batch.returns
        losses = [-torch.minimum(surrogate, clipped).mean(1), error.square().mean(1),
                  -entropy.mean(1)]  # fmt: skip
        losses.append(losses[0] + ent_coef * losses[2] + self.vf_coef * losses[1])
        losses.append(((ratio - 1).abs() > self.clip_range).float().mean(1))
        losses.append(((ratio - 1) - log_ratio).mean(1))
        # d(loss)/d(log prob of the action taken): the surrogate's gradient flows through the
        # unclipped term where it is the smaller (or equal: then both terms are r's own).
        d_log_prob = torch.where(surrogate <= clipped, -advantages, 0.0).mul_(ratio).div_(b)
        # d(-entropy)/d(logits) = p (log p + entropy), per sample, over the batch size.
        d_logits = (log_probs + entropy.unsqueeze(1)).mul_(probs)
        d_logits.mul_((ent_coef / b)[:, None, None]).sub_(probs * d_log_prob.unsqueeze(1))
        d_logits.scatter_add_(1, actions, d_log_prob.unsqueeze(1))
        d_out = self._buffer("d_out", out.shape)  # its other blocks stay zero: never written
        d_out[:, :a, :b] = d_logits
        d_out[:, a, b:] = error.mul_(2 * self.vf_coef / b)
        self._backward(weights, d_out, grad)
        return Losses(*losses)

    def _backward(self, weights: Prepared, d_out: torch.Tensor, grad: torch.Tensor) -> None:
        """The parameter gradient ``(G, P)`` into ``grad`` from the heads' output gradient
        ``d_out`` ``(G, actions + 1, 2B)``, reading the last forward pass's buffers."""
        g, a = d_out.shape[0], self.n_actions
        b = d_out.shape[2] // 2
        x, h1 = (
            self._buffer("x", (2 * g, b, self.n_obs)),
            self._buffer("h1", (2 * g, b, self.hidden)),
        )
        h2 = self._buffer("h2", h1.shape).view(g, 2 * b, self.hidden)  # (policy; value) rows
        d_heads, d_head_bias = matmul(d_out, h2), d_out.sum(2, keepdim=True)  # transposed
        d2 = self._buffer("d2", h1.shape).view(h2.shape)
        d2 = matmul(d_out.transpose(1, 2), weights.heads, out=d2)
        d2 = torch.ops.aten.tanh_backward.grad_input(d2, h2, grad_input=d2).view(h1.shape)
        d_w2, d_b2 = matmul(h1.transpose(1, 2), d2), d2.sum(1, keepdim=True)
        d1 = matmul(d2, weights.w2.transpose(1, 2), out=h2.view(h1.shape))  # h2 is spent
        d1 = torch.ops.aten.tanh_backward.grad_input(d1, h1, grad_input=d1)
        d_w1, d_b1 = matmul(x.transpose(1, 2), d1), d1.sum(1, keepdim=True)
        self.layout.pack(
            [d_w1.view(g, -1), d_b1.view(g, -1), d_w2.view(g, -1), d_b2.view(g, -1),
             d_heads[:, :a].transpose(1, 2), d_head_bias[:, :a].transpose(1, 2),
             d_heads[:, a:].transpose(1, 2), d_head_bias[:, a:].transpose(1, 2)],
            out=grad,
        )  # fmt: skip
