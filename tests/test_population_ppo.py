"""The CartPole PPO population's hand-written loss gradient against autograd's."""

from __future__ import annotations

import torch

from trainenv.trainers.population import CartPolePPOPopulation
from trainenv.trainers.population.ppo_networks import CHUNK, Minibatch


def test_ppo_gradient_is_autograds() -> None:
    """Each member's loss and gradient (members in two chunks, some ratios clipped, entropy
    coefficients of each member's own) are those of the same loss written with autograd."""
    g, b = CHUNK + 2, 64
    population = CartPolePPOPopulation(g)
    population.reset(list(range(g)))
    generator = torch.Generator().manual_seed(0)
    weights = population.weights + 0.3 * torch.randn(population.weights.shape, generator=generator)
    batch = Minibatch(
        obs=torch.randn(g, b, 4, generator=generator),
        actions=torch.randint(2, (g, b), generator=generator),
        log_prob=torch.log(torch.rand(g, b, generator=generator) * 0.9 + 0.05),
        advantages=torch.randn(g, b, generator=generator),
        returns=torch.randn(g, b, generator=generator),
    )
    ent_coef = torch.linspace(0.0, 0.5, g)
    networks = population.networks
    grad = torch.empty(g, population.layout.size)
    losses = networks.loss_and_grad(networks.prepare(weights), batch, ent_coef, grad)

    params = [t.detach().clone().requires_grad_() for t in population.layout.split(weights)]
    w1, b1, w2, b2, w_pi, b_pi, w_v, b_v = params
    x = batch.obs.unsqueeze(1)  # (G, 1, B, 4): both networks read it
    h = torch.tanh(torch.tanh(x @ w1 + b1) @ w2 + b2)  # (G, 2, B, 64)
    log_probs = torch.log_softmax(h[:, 0] @ w_pi + b_pi, -1)
    values = (h[:, 1] @ w_v + b_v).squeeze(-1)
    ratio = torch.exp(log_probs.gather(-1, batch.actions[..., None]).squeeze(-1) - batch.log_prob)
    clip = population.clip_range
    surrogate = torch.min(batch.advantages * ratio,
                          batch.advantages * ratio.clamp(1 - clip, 1 + clip))  # fmt: skip
    pg, vf = -surrogate.mean(1), (batch.returns - values).pow(2).mean(1)
    ent = (log_probs.exp() * log_probs).sum(-1).mean(1)
    loss = pg + ent_coef * ent + population.vf_coef * vf
    expected = population.layout.pack(torch.autograd.grad(loss.sum(), params))

    clipped = ((ratio - 1).abs() > clip).float().mean(1)
    assert float(clipped.min()) > 0 and float(clipped.max()) < 1  # both branches are exercised
    for ours, theirs in zip(losses[:4], (pg, vf, ent, loss), strict=True):
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.clip, clipped)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert float(grad.abs().sum(1).min()) > 0
