"""The environment contract, checked on every registered env and a user-built env per trainer.

Every case must pass Gymnasium's and stable-baselines3's ``check_env`` in both action modes,
replay bit for bit from the same seed, fork, run interleaved with another run, survive a pickle
round trip, show an effect for every intervention it offers, and reject an invalid action with
a ``ValueError`` before the run is touched. The inner recipes are shrunk (few updates per step,
small batches, short episodes): the env's interface is the same, and a case takes seconds.
"""

from __future__ import annotations

import functools
import pickle
import random
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import trainenv
from trainenv.core import interventions as registry
from trainenv.core.actions import DiscreteMenu
from trainenv.env import TrainEnv

MODES = ("discrete", "continuous")
LM_SMALL = {"batch_size": 4, "seq_len": 16, "eval_every": 2, "eval_batches": 1, "warmup": 4}
PPO_SMALL = {"n_envs": 1, "algo_kwargs": {"n_steps": 16, "batch_size": 16, "n_epochs": 1}}
SMALL_TRAINER: dict[str, dict[str, Any]] = {
    "trainenv/CartPole-PPO-v0": PPO_SMALL,
    "trainenv/TinyLM-v0": LM_SMALL,
    "trainenv/SmallLM-v0": {**LM_SMALL, "model_config": {"n_layer": 1, "n_embd": 16, "n_head": 2}},
}
"""Smaller inner recipes for the registered ids (any other id runs its own recipe)."""


def registered(env_id: str) -> Callable[[str], TrainEnv]:
    def make(action_mode: str) -> TrainEnv:
        kwargs = {"k": 2, "max_steps": 8, "action_mode": action_mode}
        if env_id in SMALL_TRAINER:
            kwargs["trainer_kwargs"] = SMALL_TRAINER[env_id]
        return gym.make(env_id, **kwargs).unwrapped

    return make


def user_built(build_trainer: Callable[[], Any]) -> Callable[[str], TrainEnv]:
    """A ``TrainEnv`` a user builds around a trainer (telemetry observations: no encoder)."""

    def make(action_mode: str) -> TrainEnv:
        return TrainEnv(build_trainer(), k=2, max_steps=8, action_mode=action_mode,
                        observation="telemetry")  # fmt: skip

    return make


def _supervised() -> Any:
    from trainenv.trainers.supervised import SupervisedTrainer

    return SupervisedTrainer(hidden=(16,))


def _a2c() -> Any:
    from trainenv.trainers.sb3 import SB3Trainer

    small = {"n_steps": 8, "policy_kwargs": {"net_arch": [16]}}
    return SB3Trainer("A2C", algo_kwargs=small)


def _causal_lm() -> Any:
    from trainenv.trainers.lm import CausalLMTrainer

    tiny = {"n_layer": 1, "n_embd": 16, "n_head": 2}
    return CausalLMTrainer(model_config=tiny, **LM_SMALL)


CASES: dict[str, Callable[[str], TrainEnv]] = {
    **{env_id: registered(env_id) for env_id in trainenv.ENV_IDS},
    "user:SupervisedTrainer": user_built(_supervised),
    "user:SB3Trainer-A2C": user_built(_a2c),
    "user:CausalLMTrainer": user_built(_causal_lm),
}


# -- helpers ----------------------------------------------------------------------------------
def noop(env: TrainEnv) -> Any:
    """The action that applies nothing."""
    return env.action_spec.encode({})


def actions(env: TrainEnv, n: int, seed: int = 0) -> list[Any]:
    """``n`` actions, reproducible from ``seed``: no-ops (which let the run show an effect)
    alternate with interventions. On a menu, a random entry other than the no-op; on a box,
    every other intervention at a random magnitude, the two halves taking turns, so any
    two consecutive intervention actions apply everything on offer."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(noop(env))
        elif isinstance(env.action_spec, DiscreteMenu):
            out.append(int(rng.integers(1, env.action_space.n)))
        else:
            width = env.action_space.shape[0]
            on = (np.arange(width) + i // 2) % 2 == 0
            out.append(np.where(on, rng.uniform(0.05, 1.0, width), -1.0).astype(np.float32))
    return out


def applied(trajectory: list[tuple]) -> set[str]:
    """The names of the interventions a trajectory applied."""
    return {name for *_, info in trajectory for name, _ in info.get("applied", [])}


def run(env: TrainEnv, steps: list[Any], seed: int | None = None) -> list[tuple]:
    """Everything the env returns (reset first when ``seed`` is given), until the episode ends."""
    out: list[tuple] = [env.reset(seed=seed)] if seed is not None else []
    for action in steps:
        out.append(env.step(action))
        if out[-1][2] or out[-1][3]:
            break
    return out


def assert_identical(a: list[tuple], b: list[tuple]) -> None:
    """Bit-identical observations, rewards, flags and infos (NaN equal to NaN)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_equal(x, y)


def disturb_global_generators() -> None:
    """Other work in the same process: draws from every global generator a run might use."""
    torch.rand(3)
    np.random.rand(3)  # noqa: NPY002  (the legacy global generator, on purpose)
    random.random()


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Callable[[str], TrainEnv]:
    return CASES[request.param]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the contract -----------------------------------------------------------------------------
def test_gymnasium_and_sb3_checkers_pass(case: Callable[[str], TrainEnv], mode: str) -> None:
    env = case(mode)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_same_seed_and_actions_replay_bit_for_bit(
    case: Callable[[str], TrainEnv], mode: str
) -> None:
    env = case(mode)
    steps = actions(env, 6)
    first = run(env, steps, seed=3)
    assert_identical(run(env, steps, seed=3), first)  # the same env, reset
    assert_identical(run(case(mode), steps, seed=3), first)  # a new one
    other = run(env, steps, seed=4)
    assert first[-1][4]["telemetry"] != other[-1][4]["telemetry"]  # the seed matters
    if mode == "continuous":  # the replay went through every intervention on offer
        assert applied(first) == {i.name for i in env.interventions}


def test_a_fork_continues_exactly_like_its_parent(
    case: Callable[[str], TrainEnv], mode: str
) -> None:
    env = case(mode)
    run(env, actions(env, 2, seed=1), seed=5)
    fork = env.fork()
    steps = actions(env, 5, seed=2)
    continuation = run(env, steps)  # the parent first: stepping it must not move the fork
    assert_identical(run(fork, steps), continuation)
    if mode == "continuous":  # the fork carried every intervention's state
        assert applied(continuation) == {i.name for i in env.interventions}


def test_two_runs_stepped_alternately_match_each_alone(
    case: Callable[[str], TrainEnv], mode: str
) -> None:
    a, b = case(mode), case(mode)
    steps = actions(a, 5)
    alone = run(a, steps, seed=1), run(b, steps, seed=2)
    together: tuple[list, list] = ([a.reset(seed=1)], [b.reset(seed=2)])
    for action in steps:
        for env, out in zip((a, b), together):
            if len(out) == 1 or not (out[-1][2] or out[-1][3]):
                out.append(env.step(action))
            disturb_global_generators()
    assert_identical(together[0], alone[0])
    assert_identical(together[1], alone[1])


def test_a_pickled_env_continues_identically(case: Callable[[str], TrainEnv], mode: str) -> None:
    env = case(mode)
    run(env, actions(env, 2, seed=1), seed=6)
    copy = pickle.loads(pickle.dumps(env))
    steps = actions(env, 4, seed=2)
    assert_identical(run(copy, steps), run(env, steps))


def bad_actions(env: TrainEnv, mode: str) -> list[Any]:
    """Invalid actions. A bad continuous component sits among components at full strength, so
    an env that applied the valid part before validating the rest would show it."""
    if mode == "discrete":
        return [-1, env.action_space.n, 1.5, np.nan, np.inf, True, "1", None, [0, 1],
                np.zeros((1, 1))]  # fmt: skip
    n = env.action_space.shape[0]

    def strongest_but(index: int, value: float) -> np.ndarray:
        vector = np.ones(n)
        vector[index] = value
        return vector

    return [strongest_but(0, np.nan), strongest_but(n - 1, np.inf), strongest_but(n // 2, 1.5),
            strongest_but(n // 2, -1.5), np.zeros(n + 1), 0.0, "x", None]  # fmt: skip


def test_invalid_actions_raise_before_the_run_is_touched(
    case: Callable[[str], TrainEnv], mode: str
) -> None:
    env = case(mode)
    run(env, [noop(env)], seed=0)
    twin, updates, knobs = env.fork(), env.trainer.updates, env.trainer.knobs
    for bad in bad_actions(env, mode):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
        assert env.trainer.updates == updates and env.trainer.knobs == knobs, bad
    steps = actions(env, 3, seed=4)
    assert_identical(run(env, steps), run(twin, steps))


# -- every offered intervention changes the run -----------------------------------------------
@functools.cache
def shared_env(name: str) -> TrainEnv:
    """One continuous-action env per case, reused by the intervention tests (each resets it)."""
    return CASES[name]("continuous")


def strongest(intervention: Any) -> float:
    """Stabilizers bite hardest at their low end, everything else at the high end."""
    low_end = ("grad_clip", "lr_backoff", "logit_softcap")
    return float(intervention.low if intervention.name in low_end else intervention.high)


REPEATS = {"user:SB3Trainer-A2C", "user:CausalLMTrainer"}
"""User-built cases whose trainer class a registered env already runs through the
per-intervention checks: those parametrizations are marked slow."""


def marks(name: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.slow] if name in REPEATS else []


def offered(name: str) -> list[str]:
    """The names of the interventions a case offers. A case that cannot be built yields one
    placeholder, so its test reports the error instead of the whole module failing to load."""
    try:
        return [i.name for i in shared_env(name).interventions]
    except Exception:  # noqa: BLE001  (re-raised by the test that builds the case)
        return ["<cannot-build>"]


OFFERED = [
    pytest.param(name, intervention, id=f"{name}-{intervention}", marks=marks(name))
    for name in CASES
    for intervention in offered(name)
]


@pytest.mark.parametrize(("name", "intervention"), OFFERED)
def test_every_offered_intervention_changes_the_run(name: str, intervention: str) -> None:
    """After a few plain steps, the intervention at its strongest magnitude is reported in
    ``info`` (applied; its knob in force, on the trainer too) and the run's telemetry differs
    from a fork's that took a no-op instead (whose knob stays at its default)."""
    env = shared_env(name)
    chosen = env.action_spec.intervention(intervention)
    run(env, [noop(env)] * 2, seed=1)
    twin = env.fork()
    magnitude = strongest(chosen)
    info = env.intervene({intervention: magnitude})[4]
    twin_info = twin.intervene({})[4]
    assert info["applied"] == [(intervention, pytest.approx(magnitude, rel=1e-4))]
    assert twin_info["applied"] == []
    if chosen.knob:
        assert info["knobs"][chosen.knob] == pytest.approx(magnitude, rel=1e-4)
        assert env.trainer.knobs[chosen.knob] == info["knobs"][chosen.knob]
        assert twin_info["knobs"][chosen.knob] == env.trainer.knob_spec(chosen.knob).default
    assert info["telemetry"] != twin_info["telemetry"]


# -- the intervention-level API: step(action) is intervene(decode(action)) --------------------
def test_intervening_with_nothing_is_the_noop_step(
    case: Callable[[str], TrainEnv], mode: str
) -> None:
    env = case(mode)
    run(env, [noop(env)], seed=7)
    twin = env.fork()
    stepped = run(twin, [noop(env)] * 3)
    intervened = [env.intervene({}) for _ in range(3)]
    assert_identical(intervened, stepped)


def menu_magnitude(env: TrainEnv, intervention: Any) -> float:
    """A magnitude the action spec represents: the top menu level, or the strongest one."""
    if isinstance(env.action_spec, DiscreteMenu):
        name = intervention.name
        return max(entry[name] for entry in env.action_spec.entries if name in entry)
    return strongest(intervention)


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks(n)) for n in CASES])
def test_stepping_an_encoded_action_is_intervening_with_its_magnitudes(
    name: str, mode: str
) -> None:
    """For every offered intervention: ``encode`` names the magnitude (exactly on a menu,
    within float32 rounding on a box), and stepping the action is intervening with what it
    decodes to, bit for bit."""
    env = CASES[name](mode)
    run(env, [noop(env)], seed=8)
    for intervention in env.interventions:
        magnitude = menu_magnitude(env, intervention)
        action = env.action_spec.encode({intervention.name: magnitude})
        decoded = env.action_spec.decode(action)
        if mode == "discrete":
            assert decoded == {intervention.name: magnitude}
        else:
            assert decoded == {intervention.name: pytest.approx(magnitude, rel=1e-5)}
        twin = env.fork()
        assert_identical([env.fork().intervene(decoded)], [twin.step(action)])


def bad_interventions(env: TrainEnv) -> list[Any]:
    """Calls ``intervene`` must reject: unknown or unoffered names, magnitudes out of range or
    not numbers, non-mappings, and a valid intervention next to an invalid one."""
    first = env.interventions[0]
    unoffered = [i.name for i in registry.all_interventions() if i not in env.interventions]
    bad_magnitudes = [first.high * 2, first.low / 2 if first.low > 0 else first.low - 1,
                      np.nan, np.inf, -np.inf, "1", None, True]  # fmt: skip
    return [
        {"no_such_intervention": 1.0},
        *({name: 1.0} for name in unoffered[:1]),
        *({first.name: bad} for bad in bad_magnitudes),
        {first.name: strongest(first), "no_such_intervention": 1.0},
        [(first.name, strongest(first))],
        first.name,
        None,
    ]


def test_bad_interventions_raise_before_the_run_is_touched(
    case: Callable[[str], TrainEnv],
) -> None:
    env = case("continuous")
    run(env, [noop(env)], seed=0)
    twin, updates, knobs = env.fork(), env.trainer.updates, env.trainer.knobs
    for bad in bad_interventions(env):
        with pytest.raises(ValueError):
            env.intervene(bad)
        assert env.trainer.updates == updates and env.trainer.knobs == knobs, bad
    steps = actions(env, 3, seed=4)
    assert_identical(run(env, steps), run(twin, steps))
