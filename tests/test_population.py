"""Populations: members are runs (per-member knobs, events, forks, divergence), batch-invariant."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from trainenv.trainers.population import (
    CartPolePPOPopulation,
    DigitsMLPPopulation,
    PopulationTrainer,
)
from trainenv.trainers.population.stacked import StackedAdam
from trainenv.trainers.supervised import SupervisedTrainer, dropout_masks

FAST_PPO = {"n_steps": 8, "n_epochs": 2}  # a quick variant of the recipe for the tests


def digits(n: int) -> PopulationTrainer:
    return DigitsMLPPopulation(n)


def ppo(n: int) -> PopulationTrainer:
    return CartPolePPOPopulation(n, algo_kwargs=FAST_PPO)


RECIPES = [pytest.param(digits, 12, id="digits"), pytest.param(ppo, 2, id="ppo")]
"""(factory, updates per advance): enough updates to cross a validation pass / episodes."""


def started(make: Callable[[int], PopulationTrainer], seeds: list[int]) -> PopulationTrainer:
    population = make(len(seeds))
    population.reset(seeds)
    return population


def member_params(population: PopulationTrainer, member: int) -> list[torch.Tensor]:
    return [population.weights[member].clone()]  # type: ignore[attr-defined]


def assert_same_params(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):  # bit for bit, NaN where NaN
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("make", "k"), RECIPES)
def test_batch_invariance_alone_and_as_a_member(make, k) -> None:
    """Bit for bit on CPU: a seed alone (N=1) and as member 3 of 4 give the same telemetry,
    also when others train in separate groups (their own batch sizes, down to one example,
    where a one-member product could take a matrix-vector kernel), and so do those."""
    alone = started(make, [7]).advance(k)
    population = started(make, [1, 2, 3, 7])
    population.set_knob(1, "batch_shrink", 2.0)
    population.set_knob(2, "batch_shrink", 1e6)  # one example per batch
    together = population.advance(k)
    assert together.n_updates.tolist() == [k] * 4
    np.testing.assert_array_equal(together.values[3], alone.values[0])
    assert not np.array_equal(together.values[0], together.values[3])  # seeds matter
    tiny = started(make, [3])
    tiny.set_knob(0, "batch_shrink", 1e6)
    np.testing.assert_array_equal(tiny.advance(k).values[0], together.values[2])


def test_ppo_recipe_batch_invariance_and_learning() -> None:
    """The registered recipe itself (8 envs x 32 steps, 20 epochs): N=1 and member 2 of 3 agree."""
    alone = CartPolePPOPopulation(1)
    alone.reset([5])
    population = CartPolePPOPopulation(3)
    population.reset([0, 1, 5])
    np.testing.assert_array_equal(population.advance(2).values[2], alone.advance(2).values[0])
    np.testing.assert_array_equal(population.evaluate()[2], alone.evaluate()[0])


@pytest.mark.parametrize(("make", "k"), RECIPES)
def test_knob_acts_on_its_member_only(make, k) -> None:
    reference = started(make, [0, 1, 2]).advance(k)
    population = started(make, [0, 1, 2])
    population.set_knob(1, "lr_scale", 10.0)
    telemetry = population.advance(k)
    assert population.knobs(1)["lr_scale"] == 10.0
    assert population.knobs(0)["lr_scale"] == population.knobs(2)["lr_scale"] == 1.0
    lr = [c.name for c in population.channels].index("lr")
    assert telemetry.values[1, 0, lr] == 10.0 * reference.values[1, 0, lr]
    for member in (0, 2):
        np.testing.assert_array_equal(telemetry.values[member], reference.values[member])
    population.reset_knob(1, "lr_scale")
    assert population.knob_values("lr_scale").tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("make", "k"), RECIPES)
@pytest.mark.parametrize(
    "event", ["weight_noise", "weight_rescale", "layer_reset", "optimizer_reset"]
)
def test_event_acts_on_its_member_only(make, k, event) -> None:
    population = started(make, [0, 1, 2])
    population.advance(1)
    before = [member_params(population, m) for m in range(3)]
    optimizer = population.optimizer  # type: ignore[attr-defined]
    moments_before = [optimizer.member_state(m)["exp_avg"] for m in range(3)]
    population.apply_event(1, event, 0.5)
    assert_same_params(member_params(population, 0), before[0])
    assert_same_params(member_params(population, 2), before[2])
    if event == "optimizer_reset":  # halved, not cleared, and only member 1's
        assert float(moments_before[1].abs().sum()) > 0
        assert torch.equal(optimizer.member_state(1)["exp_avg"], moments_before[1] * 0.5)
        assert torch.equal(optimizer.member_state(0)["exp_avg"], moments_before[0])
    else:
        after = member_params(population, 1)
        assert not all(torch.equal(x, y) for x, y in zip(after, before[1]))


@pytest.mark.parametrize(("make", "k"), RECIPES)
def test_copied_member_continues_like_its_source(make, k) -> None:
    population = started(make, [0, 1, 2])
    population.set_knob(0, "grad_clip", 0.3)
    population.advance(k)
    population.copy_member(0, 2)
    assert population.knobs(2)["grad_clip"] == 0.3
    assert population.seeds[2] == 0 and population.updates[2] == population.updates[0]
    telemetry = population.advance(k)
    np.testing.assert_array_equal(telemetry.values[2], telemetry.values[0])
    assert population.evaluate()[2] == population.evaluate()[0]


@pytest.mark.parametrize(("make", "k"), RECIPES)
def test_restored_snapshot_reproduces_the_continuation(make, k) -> None:
    population = started(make, [3, 4])
    population.advance(k)
    snapshot = population.snapshot(1)
    first = population.advance(k).values[1]
    population.restore(1, snapshot)
    np.testing.assert_array_equal(population.advance(k).values[1], first)
    population.restore(1, snapshot)  # a snapshot stays valid for further restores
    np.testing.assert_array_equal(population.advance(k).values[1], first)


@pytest.mark.parametrize(("make", "k"), RECIPES)
def test_reset_member_touches_that_member_only(make, k) -> None:
    population = started(make, [0, 1])
    population.advance(k)
    kept = member_params(population, 0)
    population.reset_member(1, 9)
    assert_same_params(member_params(population, 0), kept)
    assert population.seeds == [0, 9] and population.updates.tolist() == [k, 0]
    fresh = started(make, [9])
    assert_same_params(member_params(population, 1), member_params(fresh, 0))


@pytest.mark.parametrize(("make", "k"), RECIPES)
def test_diverged_member_is_frozen_and_the_others_carry_on(make, k) -> None:
    reference = started(make, [0, 1, 2]).advance(k)
    population = started(make, [0, 1, 2])
    population.apply_event(1, "weight_rescale", 1e30)
    telemetry = population.advance(k)
    assert telemetry.diverged.tolist() == [False, True, False]
    assert telemetry.n_updates[1] == 1 and np.isnan(telemetry.values[1, 1:]).all()
    assert telemetry.member(1).diverged and len(telemetry.member(1).values) == 1
    for member in (0, 2):
        np.testing.assert_array_equal(telemetry.values[member], reference.values[member])
    frozen = member_params(population, 1)
    again = population.advance(1)
    assert again.n_updates.tolist() == [1, 0, 1] and again.diverged[1]
    assert_same_params(member_params(population, 1), frozen)
    population.reset_member(1, 1)
    assert not population.diverged[1]


def test_bad_input_raises_before_any_work() -> None:
    population = started(digits, [0, 1])
    state = member_params(population, 0)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: population.set_knob(2, "lr_scale", 2.0), "member"),
        (lambda: population.set_knob(-1, "lr_scale", 2.0), "member"),
        (lambda: population.set_knob(0, "no_such_knob", 2.0), "no_such_knob"),
        (lambda: population.set_knob(0, "lr_scale", -1.0), "lr_scale"),
        (lambda: population.apply_event(5, "weight_noise", 0.1), "member"),
        (lambda: population.apply_event(0, "no_such_event", 0.1), "no_such_event"),
        (lambda: population.copy_member(0, 2), "dst"),
        (lambda: population.snapshot(True), "member"),  # type: ignore[arg-type]
        (lambda: population.reset([1]), "seeds"),
        (lambda: population.reset([0, -1]), "seeds[1]"),
        (lambda: population.reset_member(0, 1.5), "seed"),  # type: ignore[arg-type]
        (lambda: population.advance(0), "k"),
        (lambda: DigitsMLPPopulation(0), "n_members"),
        (lambda: DigitsMLPPopulation(2, batch_size=0), "batch_size"),
        (lambda: DigitsMLPPopulation(2, dropout=1.0), "dropout"),
        (lambda: population.set_knob(0, "dropout", 0.99), "dropout"),
        (lambda: CartPolePPOPopulation(2, algo_kwargs={"target_kl": 0.1}), "target_kl"),
    ]
    for call, field in cases:
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            call()
    assert_same_params(member_params(population, 0), state)
    assert population.knob_values("lr_scale").tolist() == [1.0, 1.0]
    assert population.updates.tolist() == [0, 0]


def test_declarations_match_the_single_run_trainers() -> None:
    from trainenv.envs import CARTPOLE_PPO_RECIPE, make_cartpole_ppo
    from trainenv.trainers.population.ppo import CARTPOLE_PPO_RECIPE as POPULATION_RECIPE

    assert POPULATION_RECIPE == CARTPOLE_PPO_RECIPE
    single = make_cartpole_ppo(observation="telemetry").unwrapped.trainer  # type: ignore[attr-defined]
    population = CartPolePPOPopulation(1)
    assert population.channels == single.channels
    assert population.knob_specs == single.knob_specs
    assert population.events == single.events
    assert population.performance_range == single.performance_range
    mlp, supervised = DigitsMLPPopulation(1), SupervisedTrainer()
    assert (mlp.channels, mlp.knob_specs, mlp.events) == (
        supervised.channels, supervised.knob_specs, supervised.events,
    )  # fmt: skip


def test_digits_members_learn() -> None:
    population = started(digits, [0, 1])
    population.advance(150)
    assert (population.evaluate() > 0.8).all()


def test_digits_gradient_is_autograds() -> None:
    """The spelled-out backward pass gives each member autograd's gradient of its own loss."""
    population = started(digits, [0, 1, 2])
    population.advance(3)
    x, y = population._next_batch(np.arange(3), 32)  # type: ignore[attr-defined]
    layout = population.layout  # type: ignore[attr-defined]
    weights = layout.split(population.weights)  # type: ignore[attr-defined]
    grad = torch.empty(3, layout.size)
    losses = population._loss_and_grad(weights, x, y, grad)  # type: ignore[attr-defined]
    params = [w.detach().clone().requires_grad_() for w in weights]
    h = x
    for w, b in zip(params[:-2:2], params[1:-2:2]):
        h = torch.relu(h @ w + b)
    logits = h @ params[-2].transpose(1, 2) + params[-1].transpose(1, 2)  # (G, B, classes)
    reference = (
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        .view(3, -1)
        .mean(1)
    )
    expected = layout.pack(torch.autograd.grad(reference.sum(), params))
    torch.testing.assert_close(losses, reference.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    assert float(grad.abs().sum()) > 0


def test_digits_dropout_is_per_member_and_batch_invariant() -> None:
    """A member's dropout changes its trajectory only; the member replays bit for bit alone
    (N=1) and beside members with other dropout rates or none, whose rows stay bit for bit
    those of a population without dropout (their masks are ones)."""
    reference = started(digits, [1, 2, 3, 7]).advance(12)
    alone = started(digits, [7])
    alone.set_knob(0, "dropout", 0.3)
    population = started(digits, [1, 2, 3, 7])
    population.set_knob(3, "dropout", 0.3)
    population.set_knob(1, "dropout", 0.1)
    together = population.advance(12)
    np.testing.assert_array_equal(together.values[3], alone.advance(12).values[0])
    for member in (0, 2):
        np.testing.assert_array_equal(together.values[member], reference.values[member])
    loss = [c.name for c in population.channels].index("train_loss")
    for member in (1, 3):
        assert not np.array_equal(together.values[member], reference.values[member])
        # the first update: the same initial weights, batch and data order; masks differ
        assert together.values[member, 0, loss] != reference.values[member, 0, loss]


def test_digits_dropout_replays_and_forks() -> None:
    """Masks come from each member's own dropout stream: the same seed replays, a restored
    snapshot or a copied member continues exactly, and dropout at 0 is the recipe."""

    def with_dropout(p: float) -> PopulationTrainer:
        population = started(digits, [4, 5])
        population.set_knob(0, "dropout", p)
        return population

    first = with_dropout(0.2).advance(12)
    np.testing.assert_array_equal(with_dropout(0.2).advance(12).values, first.values)
    np.testing.assert_array_equal(
        with_dropout(0.0).advance(12).values, started(digits, [4, 5]).advance(12).values
    )
    population = with_dropout(0.2)
    population.advance(5)
    snapshot = population.snapshot(0)
    continuation = population.advance(12).values[0]
    population.restore(0, snapshot)
    np.testing.assert_array_equal(population.advance(12).values[0], continuation)
    population.restore(0, snapshot)
    population.copy_member(0, 1)
    np.testing.assert_array_equal(population.advance(12).values[1], continuation)


def test_digits_dropout_gradient_is_autograds() -> None:
    """With dropout masks, the spelled-out backward pass is still autograd's gradient."""
    population = started(digits, [0, 1])
    population.set_knob(1, "dropout", 0.5)
    x, y = population._next_batch(np.arange(2), 32)  # type: ignore[attr-defined]
    masks = population._dropout_masks(np.arange(2), 32)  # type: ignore[attr-defined]
    assert masks is not None and bool((masks[0][1] == 0).any())
    assert bool((masks[0][0] == 1).all())  # no dropout for member 0
    single = SupervisedTrainer()  # a member's masks are its single run's (the same stream)
    single.reset(1)
    drawn = torch.from_numpy(dropout_masks(single.perturbation_rng("dropout"), 0.5, 32, (64, 64)))
    assert torch.equal(torch.cat([m[1] for m in masks], 1), drawn)
    layout = population.layout  # type: ignore[attr-defined]
    weights = layout.split(population.weights)  # type: ignore[attr-defined]
    grad = torch.empty(2, layout.size)
    losses = population._loss_and_grad(weights, x, y, grad, masks)  # type: ignore[attr-defined]
    params = [w.detach().clone().requires_grad_() for w in weights]
    h = x
    for layer, (w, b) in enumerate(zip(params[:-2:2], params[1:-2:2])):
        h = torch.relu(h @ w + b) * masks[layer]
    logits = h @ params[-2].transpose(1, 2) + params[-1].transpose(1, 2)
    reference = torch.stack([torch.nn.functional.cross_entropy(logits[g], y[g]) for g in range(2)])
    expected = layout.pack(torch.autograd.grad(reference.sum(), params))
    torch.testing.assert_close(losses, reference.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def test_digits_validation_predictions_are_argmax() -> None:
    """Validation predicts with ``max(1).indices`` over classes-first logits: argmax's choice
    (the first maximum; NaN counts as the maximum), ties, NaN and infinities included."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (4, 10, 50), generator=generator).float()  # many ties
    logits[torch.rand(logits.shape, generator=generator) < 0.05] = float("nan")
    logits[torch.rand(logits.shape, generator=generator) < 0.05] = float("inf")
    logits[torch.rand(logits.shape, generator=generator) < 0.05] = -float("inf")
    assert torch.equal(logits.max(1).indices, logits.transpose(1, 2).contiguous().argmax(-1))


def test_stacked_adam_is_one_torch_adam_per_member() -> None:
    """Each row steps as ``torch.optim.Adam`` with that member's learning rate and step count;
    a step of some members leaves the others untouched."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(3, 40, generator=generator)
    lr = np.array([1e-3, 1e-2, 3e-3])
    optimizer = StackedAdam(start.clone())
    rows = [start[i].clone().requires_grad_() for i in range(3)]
    references = [torch.optim.Adam([row], lr=float(lr[i])) for i, row in enumerate(rows)]
    for step in range(6):
        grads = torch.randn(3, 40, generator=generator)
        members = None if step % 2 == 0 else np.array([0, 2])
        if members is None:
            optimizer.grad.copy_(grads)
            optimizer.step(None, optimizer.grad, lr)
        else:
            optimizer.step(members, grads[members], lr[members])
        for i in range(3) if members is None else members:
            rows[i].grad = grads[i].clone()
            references[i].step()
    torch.testing.assert_close(optimizer.weights, torch.stack(rows).detach())
    assert optimizer.steps.tolist() == [6, 3, 6]
