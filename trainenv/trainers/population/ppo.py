"""A population of PPO runs on CartPole: ``trainenv/CartPole-PPO-v0``'s recipe, batched.

One update is what ``SB3Trainer`` does in one ``learn`` call of stable-baselines3's PPO: a
rollout of ``n_steps`` steps in each of ``n_envs`` environments, then ``n_epochs`` epochs of
clipped-surrogate minibatch Adam steps. The policy is SB3's ``MlpPolicy`` for a discrete action
space: separate 64-64 tanh policy and value networks, orthogonal initialisation, Adam with
``eps=1e-5``; advantages are GAE, truncated episodes are bootstrapped with the value of their
final observation, and each minibatch's advantages are normalised per member.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from trainenv.core.rng import perturbation_generator
from trainenv.trainers.population.base import (
    PopulationTelemetry,
    PopulationTrainer,
    member_generators,
)
from trainenv.trainers.population.cartpole import MemberCartPoles
from trainenv.trainers.population.ppo_networks import Minibatch, PPONetworks
from trainenv.trainers.population.stacked import (
    Layout,
    Members,
    StackedAdam,
    apply_member_event,
    clip_,
    groups,
    orthogonal_linear_,
    row_norms,
)
from trainenv.trainers.sb3 import SB3Trainer

CARTPOLE_PPO_RECIPE: dict[str, Any] = {
    "n_steps": 32,
    "batch_size": 256,
    "n_epochs": 20,
    "learning_rate": 1e-3,
    "gamma": 0.98,
    "gae_lambda": 0.8,
}
"""The settings of ``trainenv/CartPole-PPO-v0`` (``trainenv.envs.CARTPOLE_PPO_RECIPE``, which
this layer may not import; a test keeps the two equal)."""

_SETTINGS = frozenset({
    "n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "clip_range",
    "ent_coef", "vf_coef", "max_grad_norm", "normalize_advantage",
})  # fmt: skip
_HIDDEN = 64
_OBS, _ACTIONS = 4, 2  # CartPole-v1


class CartPolePPOPopulation(PopulationTrainer):
    """``N`` runs of ``SB3Trainer("PPO", "CartPole-v1", n_envs=8)`` with the registered recipe,
    advanced in one batched computation.

    Channels, knobs, events, performance (mean true return of the latest ``perf_episodes``
    episodes) and divergence are ``SB3Trainer``'s, per member (its declaration is read from an
    unstarted ``SB3Trainer`` of the same recipe). Member ``i`` draws its initialisation, actions
    and minibatch order from its own torch generator and its episodes' initial states from its
    own numpy generator (both seeded from its seed), its perturbation noise from the
    single-run trainer's streams. Members with different ``batch_shrink`` train in separate
    batched computations (one per minibatch size).

    The implementation is not stable-baselines3's, so a member matches an ``SB3Trainer`` run
    in distribution, not draw for draw.

    Args:
        n_members: Population size ``N``.
        algo_kwargs: PPO settings laid over :data:`CARTPOLE_PPO_RECIPE`; supported:
            ``n_steps``, ``batch_size``, ``n_epochs``, ``learning_rate`` (a number),
            ``gamma``, ``gae_lambda``, ``clip_range`` (a number), ``ent_coef``, ``vf_coef``,
            ``max_grad_norm``, ``normalize_advantage``.
        n_envs: CartPole environments per member.
        perf_episodes: Finished episodes averaged into performance (1 to 100).
    """

    def __init__(
        self,
        n_members: int,
        algo_kwargs: Mapping[str, Any] | None = None,
        n_envs: int = 8,
        perf_episodes: int = 10,
    ) -> None:
        kwargs = {**CARTPOLE_PPO_RECIPE, **(algo_kwargs or {})}
        unsupported = sorted(set(kwargs) - _SETTINGS)
        if unsupported:
            raise ValueError(
                f"algo_kwargs has unsupported keys {unsupported}; supported: {sorted(_SETTINGS)}"
            )
        for key in ("learning_rate", "clip_range"):
            if key in kwargs and not isinstance(kwargs[key], (int, float)):
                raise ValueError(f"algo_kwargs[{key!r}] must be a number, got {kwargs[key]!r}")
        recipe = SB3Trainer("PPO", "CartPole-v1", algo_kwargs=kwargs, n_envs=n_envs,
                            perf_episodes=perf_episodes)  # fmt: skip
        super().__init__(n_members, recipe)
        settings = recipe.algo_kwargs
        self.n_steps, self.n_envs = int(settings["n_steps"]), recipe.n_envs
        self.batch_size, self.n_epochs = int(settings["batch_size"]), int(settings["n_epochs"])
        self.lr, self.clip_range = float(settings["learning_rate"]), float(settings["clip_range"])
        self.gamma, self.gae_lambda = float(settings["gamma"]), float(settings["gae_lambda"])
        self.vf_coef = float(settings["vf_coef"])
        self.normalize_advantage = bool(settings["normalize_advantage"])
        self.obs_scale = recipe.obs_scale.astype(np.float32)
        self._channel = {c.name: i for i, c in enumerate(self.channels)}
        n = self.n_members
        # Policy and value networks stacked along a second axis (0: policy, 1: value), so both
        # hidden layers of both networks are one batched product each.
        self.layout = Layout([
            (2, _OBS, _HIDDEN), (2, 1, _HIDDEN), (2, _HIDDEN, _HIDDEN), (2, 1, _HIDDEN),
            (_HIDDEN, _ACTIONS), (1, _ACTIONS), (_HIDDEN, 1), (1, 1),
        ])  # fmt: skip
        self.networks = PPONetworks(self.layout, self.clip_range, self.vf_coef)
        self.weights = torch.zeros(n, self.layout.size)  # each member's networks, packed
        self.optimizer = StackedAdam(self.weights, eps=1e-5)  # SB3's Adam eps for policies
        self.envs = MemberCartPoles(n, self.n_envs, recipe.perf_episodes)
        self._generators = [torch.Generator() for _ in range(n)]
        self._last_obs = np.zeros((n, self.n_envs, _OBS), dtype=np.float32)
        self._episode_starts = np.ones((n, self.n_envs), dtype=bool)
        self._last_row = np.zeros((n, len(self.channels)))
        self._shift_direction = np.zeros((n, _OBS), dtype=np.float32)

    # -- protocol -----------------------------------------------------------------------------
    def _reset_member(self, member: int, seed: int) -> None:
        generator, env_rng = member_generators(seed)
        self._generators[member] = generator
        views = self._views(member)
        gains = (math.sqrt(2), math.sqrt(2), 0.01, 1.0)  # SB3: hidden, hidden, policy, value
        for (weight, bias), gain in zip(zip(views[::2], views[1::2]), (*gains[:2], *gains)):
            orthogonal_linear_(weight, bias, gain, generator)
        self.optimizer.shrink(member, 1.0)
        self._last_obs[member] = self.envs.reset_member(member, env_rng)
        self._episode_starts[member] = True
        self._last_row[member] = 0.0
        self._shift_direction[member] = perturbation_generator(
            seed, "input_shift_direction"
        ).choice([-1.0, 1.0], _OBS)

    def _advance(self, k: int) -> PopulationTelemetry:
        n = self.n_members
        values = np.full((n, k, len(self.channels)), np.nan)
        n_updates = np.zeros(n, dtype=np.int64)
        diverged = self.diverged.copy()
        for step in range(k):
            live = np.flatnonzero(~diverged)
            if len(live) == 0:
                break
            rows = self._update(live)
            values[live, step] = rows
            n_updates[live] += 1
            diverged[live] |= ~np.isfinite(rows).all(axis=1)
        return PopulationTelemetry(values, n_updates, diverged)

    def evaluate(self) -> np.ndarray:
        return self.envs.performance(self.performance_range[0])

    def _member_state(self, member: int) -> dict[str, Any]:
        return {
            "weights": self.weights[member].clone(),
            "optimizer": self.optimizer.member_state(member),
            "generator": self._generators[member].get_state(),
            "envs": self.envs.member_state(member),
            "last_obs": self._last_obs[member].copy(),
            "episode_starts": self._episode_starts[member].copy(),
            "last_row": self._last_row[member].copy(),
            "shift_direction": self._shift_direction[member].copy(),
        }

    def _load_member_state(self, member: int, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.weights[member] = state["weights"]
        self.optimizer.load_member_state(member, state["optimizer"])
        self._generators[member].set_state(state["generator"].clone())
        self.envs.load_member_state(member, state["envs"])
        self._last_obs[member] = state["last_obs"]
        self._episode_starts[member] = state["episode_starts"]
        self._last_row[member] = state["last_row"]
        self._shift_direction[member] = state["shift_direction"]

    def _apply_event(self, member: int, name: str, magnitude: float) -> None:
        views = self._views(member)
        rng = self.perturbation_rng(member, name)
        # The first linear layer of SB3's policy is the policy network's first layer.
        apply_member_event(
            name, magnitude, member, views, self.optimizer, (views[0], views[1]), rng
        )

    def _views(self, member: int) -> list[torch.Tensor]:
        """Member ``member``'s weight tensors in SB3's order (policy net, value net, heads):
        ``(in, out)`` weights, ``(1, out)`` biases."""
        w1, b1, w2, b2, *heads = self.layout.member(self.weights, member)
        return [w1[0], b1[0], w2[0], b2[0], w1[1], b1[1], w2[1], b2[1], *heads]

    # -- one update ---------------------------------------------------------------------------
    def _update(self, live: np.ndarray) -> np.ndarray:
        """One rollout and training phase of the members ``live``; returns ``(G, C)`` rows."""
        everyone = len(live) == self.n_members
        select: Members = None if everyone else live
        before = self.weights.clone() if everyone else self.weights[torch.from_numpy(live)]
        batch = self._rollout(live, select)
        sizes = np.maximum(1, np.round(self.batch_size / self._knobs["batch_shrink"])).astype(int)
        rows = np.empty((len(live), len(self.channels)))
        for members, size in groups(live, sizes, self.n_members):
            if members is None:
                rows[:] = self._train(None, batch, size)
            else:
                at = np.searchsorted(live, members)
                part = {key: value[torch.from_numpy(at)] for key, value in batch.items()}
                rows[at] = self._train(members, part, size)
        after = self.weights if everyone else self.weights[torch.from_numpy(live)]
        weight_norm = row_norms(after).double().numpy()
        moved = row_norms(after - before).double().numpy()
        c = self._channel
        rows[:, c["update_ratio"]] = moved / np.maximum(weight_norm, 1e-12)
        rows[:, c["weight_norm"]] = weight_norm
        rows[:, c["episode_return"]] = self.evaluate()[live]
        ev = rows[:, c["explained_variance"]]
        # Undefined (zero-variance returns) is carried forward, as SB3Trainer does.
        rows[:, c["explained_variance"]] = np.where(
            np.isfinite(ev), ev, self._last_row[live, c["explained_variance"]]
        )
        self._last_row[live] = rows
        return rows

    def _rollout(self, live: np.ndarray, select: Members) -> dict[str, torch.Tensor]:
        """``n_steps`` steps of the members' environments under their policies: the batch of
        each member, ``(G, n_steps * n_envs, ...)`` tensors."""
        steps, n_envs, g = self.n_steps, self.n_envs, len(live)
        # Each member's action draws, from its own generator, for the whole rollout.
        uniforms = torch.stack(
            [torch.rand(steps, n_envs, generator=self._generators[m]) for m in live]
        )
        weights = self.networks.prepare(
            self.weights if select is None else self.weights[torch.from_numpy(live)]
        )
        forward = self.networks.forward
        obs_buf = torch.empty(steps, g, n_envs, _OBS)
        actions_buf = torch.empty(steps, g, n_envs, dtype=torch.long)
        log_prob_buf, value_buf = torch.empty(steps, g, n_envs), torch.empty(steps, g, n_envs)
        reward_buf, start_buf = torch.empty(steps, g, n_envs), torch.empty(steps, g, n_envs)
        obs, starts = self._last_obs[live], self._episode_starts[live]
        with torch.no_grad():
            for t in range(steps):
                obs_buf[t] = torch.from_numpy(obs)
                logits, values = forward(weights, obs_buf[t])
                log_probs = torch.log_softmax(logits, -1)
                cdf = log_probs.exp().cumsum(-1)[..., :-1]
                actions = (uniforms[:, t, :, None] > cdf).sum(-1)
                actions_buf[t], value_buf[t], start_buf[t] = (
                    actions,
                    values,
                    torch.from_numpy(starts),
                )
                log_prob_buf[t] = log_probs.gather(-1, actions[..., None]).squeeze(-1)
                next_obs, true_rewards, terminated, truncated, final = self.envs.step(
                    live, actions.numpy()
                )
                rewards = torch.from_numpy(self._learner_rewards(live, true_rewards))
                timeout = truncated & ~terminated
                if timeout.any():  # bootstrap cut-off episodes with the value of where they got
                    final_values = forward(weights, torch.from_numpy(self._observe(live, final)))[1]
                    rewards += self.gamma * torch.from_numpy(timeout) * final_values
                reward_buf[t] = rewards
                obs, starts = self._observe(live, next_obs), terminated | truncated
            last_values = forward(weights, torch.from_numpy(obs))[1].clone()
        self._last_obs[live], self._episode_starts[live] = obs, starts
        advantages = self._gae(
            reward_buf, value_buf, start_buf, last_values, torch.from_numpy(starts)
        )
        returns = advantages + value_buf

        def flat(
            t: torch.Tensor,
        ) -> torch.Tensor:  # (steps, G, n_envs, ...) -> (G, steps * n_envs, ...)
            return t.transpose(0, 1).reshape(g, steps * n_envs, *t.shape[3:])

        return {
            "obs": flat(obs_buf), "actions": flat(actions_buf), "log_prob": flat(log_prob_buf),
            "values": flat(value_buf), "advantages": flat(advantages), "returns": flat(returns),
        }  # fmt: skip

    def _gae(
        self, rewards: torch.Tensor, values: torch.Tensor, starts: torch.Tensor,
        last_values: torch.Tensor, last_dones: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Generalised advantage estimates ``(steps, G, n_envs)``, as SB3's rollout buffer."""
        advantages = torch.empty_like(rewards)
        running = torch.zeros_like(last_values)
        for t in reversed(range(len(rewards))):
            if t == len(rewards) - 1:
                alive, next_values = 1.0 - last_dones.float(), last_values
            else:
                alive, next_values = 1.0 - starts[t + 1], values[t + 1]
            delta = rewards[t] + self.gamma * next_values * alive - values[t]
            running = delta + self.gamma * self.gae_lambda * alive * running
            advantages[t] = running
        return advantages

    def _train(self, members: Members, batch: dict[str, torch.Tensor], size: int) -> np.ndarray:
        """The training epochs of one group (members sharing minibatch size ``size``) on their
        rollout ``batch``; returns their rows (losses, grad norm, lr; the rest filled later)."""
        index = np.arange(self.n_members) if members is None else members
        index_t = torch.from_numpy(index)
        g, n_samples = len(index), batch["obs"].shape[1]
        knobs = self._knobs
        lr = self.lr * knobs["lr_scale"][index] * knobs["lr_backoff"][index]
        ent_coef = torch.from_numpy(knobs["ent_coef"][index]).float()
        orders = torch.stack([
            torch.rand(self.n_epochs, n_samples, generator=self._generators[m]).argsort(-1)
            for m in index
        ])  # fmt: skip
        grad = self.optimizer.grad if members is None else torch.empty(g, self.layout.size)
        data = (batch["obs"], batch["actions"], batch["log_prob"], batch["advantages"],
                batch["returns"])  # fmt: skip
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("pg", "vf", "ent", "clip", "norm")}
        for epoch in range(self.n_epochs):
            kls = []
            for start in range(0, n_samples, size):
                # Positions in the flattened (G, n_samples) batch: index_select runs much
                # faster than a gather along dim 1 on these small tensors.
                rows = orders[:, epoch, start : start + size]
                flat = (rows + torch.arange(g)[:, None] * n_samples).view(-1)
                mb = Minibatch(*(t.flatten(0, 1).index_select(0, flat).view(*rows.shape,
                                                                            *t.shape[2:])
                                 for t in data))  # fmt: skip
                if self.normalize_advantage and rows.shape[1] > 1:
                    advantages = mb.advantages
                    mean, std = advantages.mean(1, keepdim=True), advantages.std(1, keepdim=True)
                    mb = mb._replace(advantages=(advantages - mean) / (std + 1e-8))
                weights = self.weights if members is None else self.weights[index_t]
                losses = self.networks.loss_and_grad(
                    self.networks.prepare(weights), mb, ent_coef, grad
                )
                norms = row_norms(grad)
                clip_(grad, norms, knobs["grad_clip"][index])
                self.optimizer.step(members, grad, lr)
                kls.append(losses.kl)
                for key, value in zip(stats, (losses.pg, losses.vf, losses.ent, losses.clip,
                                              norms)):  # fmt: skip
                    stats[key].append(value)
        means = {k: torch.stack(v).double().mean(0).numpy() for k, v in stats.items()}
        returns = batch["returns"].double()
        var_returns = _variance(returns)
        explained = 1 - _variance(returns - batch["values"].double()) / var_returns
        explained_variance = torch.where(var_returns == 0, torch.nan, explained).numpy()
        row = np.zeros((g, len(self.channels)))
        c = self._channel
        row[:, c["policy_gradient_loss"]], row[:, c["value_loss"]] = means["pg"], means["vf"]
        row[:, c["entropy_loss"]], row[:, c["clip_fraction"]] = means["ent"], means["clip"]
        row[:, c["approx_kl"]] = torch.stack(kls).double().mean(0).numpy()  # the last epoch's
        row[:, c["explained_variance"]] = explained_variance
        row[:, c["loss"]] = losses.loss.double().numpy()  # the last minibatch's
        row[:, c["grad_norm"]], row[:, c["lr"]] = means["norm"], lr
        return row

    # -- the learner's view of the environments (the observation and reward knobs) -------------
    def _observe(self, live: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Observations ``(G, n_envs, 4)`` as each member's learner sees them."""
        noise, shift = self._knobs["input_noise"][live], self._knobs["input_shift"][live]
        if not ((noise > 0) | (shift > 0)).any():
            return obs
        obs = obs.copy()
        for g in np.flatnonzero((noise > 0) | (shift > 0)):
            member = int(live[g])
            if noise[g] > 0:
                draw = self.perturbation_rng(member, "input_noise").standard_normal(obs[g].shape)
                obs[g] += (noise[g] * self.obs_scale * draw).astype(np.float32)
            if shift[g] > 0:
                obs[g] += (shift[g] * self.obs_scale * self._shift_direction[member]).astype(
                    np.float32
                )
        return obs

    def _learner_rewards(self, live: np.ndarray, rewards: np.ndarray) -> np.ndarray:
        """Rewards ``(G, n_envs)`` as each member's learner sees them (float32)."""
        flip, scale, noise = (self._knobs[k][live] for k in ("reward_flip", "reward_scale",
                                                             "reward_noise"))  # fmt: skip
        rewards = rewards.astype(np.float64)
        for g in np.flatnonzero((flip > 0) | (scale != 1.0) | (noise > 0)):
            member = int(live[g])
            if flip[g] > 0:
                flipped = self.perturbation_rng(member, "reward_flip").random(self.n_envs) < flip[g]
                rewards[g] = np.where(flipped, -rewards[g], rewards[g])
            rewards[g] *= scale[g]
            if noise[g] > 0:
                rewards[g] += noise[g] * self.perturbation_rng(
                    member, "reward_noise"
                ).standard_normal(self.n_envs)
        return rewards.astype(np.float32)


def _variance(x: torch.Tensor) -> torch.Tensor:
    """Shape ``(G,)``: the population variance of each row of ``x`` ``(G, n)``.

    Spelled out: ``Tensor.var`` of a one-row batch reduces in another order than of a
    several-row one, and a member's telemetry must not depend on the batch."""
    deviation = x - x.mean(1, keepdim=True)
    return (deviation * deviation).mean(1)
