"""The causal-LM trainer and ``trainenv/TinyLM-v0``: learning, collapse, rollback, what the LM
interventions do, user models, tokenizers and corpora. The env contract (checkers, replay,
forks, every intervention's effect) is checked in ``test_contract.py``.

Most tests use a smaller recipe than the registered one (4 sequences of 16 tokens) so an
update takes a few milliseconds; the learning test uses the registered recipe."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import trainenv  # noqa: F401  (registers the environments)
from trainenv.core import interventions as registry
from trainenv.env import TrainEnv
from trainenv.trainers.lm import MIN_LR_RATIO, CausalLMTrainer

from .helpers import rollout

SMALL = {"batch_size": 4, "seq_len": 16, "eval_every": 2, "eval_batches": 1, "warmup": 4}


def tiny_lm(trainer_kwargs: dict | None = None, **kwargs) -> TrainEnv:
    kwargs = {"k": 2, "max_steps": 8, "trainer_kwargs": {**SMALL, **(trainer_kwargs or {})},
              **kwargs}  # fmt: skip
    return gym.make("trainenv/TinyLM-v0", **kwargs).unwrapped


def continuous(**kwargs) -> TrainEnv:
    return tiny_lm(observation="telemetry", action_mode="continuous", **kwargs)


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~7-11 s
def test_import_trainenv_does_not_import_transformers() -> None:
    code = (
        "import sys, trainenv, trainenv.trainers\n"
        "assert 'transformers' not in sys.modules\n"
        "assert trainenv.trainers.CausalLMTrainer.__name__ == 'CausalLMTrainer'\n"
        "assert 'transformers' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_an_unperturbed_episode_learns_well_below_the_untrained_loss() -> None:
    env = gym.make("trainenv/TinyLM-v0", observation="telemetry").unwrapped
    _, info = env.reset(seed=0)
    untrained = -info["performance"]
    truncated = False
    while not truncated:
        _, _, terminated, truncated, info = env.step(0)
        assert not terminated
    trained = info["telemetry"]["val_loss"]
    assert info["updates"] == 300 and -info["performance"] == trained
    assert untrained > 5.0 and trained < untrained - 2.5
    assert env.trainer.perplexity == pytest.approx(math.exp(trained))
    assert info["p"] == pytest.approx(1 - trained / math.log(256))


def test_a_large_learning_rate_shock_collapses_the_run_without_an_exception() -> None:
    env = continuous(max_steps=20)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_spec.encode({}))
    _, reward, terminated, truncated, info = env.step(env.action_spec.encode({"lr_shock": 1e4}))
    for _ in range(env.collapse_rule.patience):  # non-finite at once, or too poor for long
        if terminated:
            break
        _, reward, terminated, truncated, info = env.step(env.action_spec.encode({}))
    assert terminated and not truncated
    assert info["collapse"] in ("non-finite", "performance")
    assert reward == -env.reward_spec.collapse_penalty


LM = list(registry.supported(CausalLMTrainer(**SMALL).targets))  # rollback: its own test


def test_the_trainer_covers_every_dimension_and_the_issue_interventions() -> None:
    names = {i.name for i in LM}
    assert {
        "lr_shock", "optimizer_reset", "batch_shrink", "warmup_restart", "token_corruption",
        "domain_shift", "sequence_shuffle", "weight_noise", "weight_rescale", "layer_rescale",
        "block_reset", "label_noise", "loss_scale", "grad_clip", "lr_backoff", "dropout",
        "z_loss", "logit_softcap",
    } <= names  # fmt: skip
    assert "rollback" in {i.name for i in continuous().action_spec.interventions}


def test_rollback_restores_the_whole_run() -> None:
    env = continuous(checkpoint_every=2)
    rollout(env, [env.action_spec.encode({})] * 2, seed=2)  # checkpoint after step 2
    fork = env.fork()
    shock = env.action_spec.encode({"lr_shock": 100.0})
    env.step(shock)
    after_rollback = env.step(env.action_spec.encode({"rollback": 1.0}))[4]
    # The shock is still in force after the rollback: the rolled-back run must redo exactly
    # the fork's first shocked step (weights, optimizer, schedule, data order, RNGs).
    assert after_rollback["telemetry"] == fork.step(shock)[4]["telemetry"]


def test_schedule_warms_up_decays_holds_and_restarts() -> None:
    trainer = CausalLMTrainer(**{**SMALL, "warmup": 4, "total_updates": 20})
    assert [trainer.schedule(p) for p in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert trainer.schedule(12) == pytest.approx(MIN_LR_RATIO + (1 - MIN_LR_RATIO) / 2)
    assert trainer.schedule(20) == trainer.schedule(500) == pytest.approx(MIN_LR_RATIO)
    trainer.reset(0)
    lrs = trainer.advance(6).values[:, -1]
    assert lrs[3] == lrs[4] == pytest.approx(trainer.lr) and lrs[5] < lrs[4]
    trainer.apply_event("warmup_restart", 1.0)
    assert trainer.advance(1).values[0, -1] == pytest.approx(trainer.lr / 4)


def test_data_perturbations_do_what_they_say(tmp_path: Path) -> None:
    shift = tmp_path / "shift.txt"
    shift.write_text("z" * 2000)
    trainer = CausalLMTrainer(shift_text=shift, **{**SMALL, "batch_size": 8})
    trainer.reset(0)
    clean_x, clean_y = trainer.fork()._next_batch(8)
    trainer.set_knob("sequence_shuffle", 1.0)
    x, y = trainer._next_batch(8)
    assert not torch.equal(x, clean_x)
    full, clean_full = torch.cat([x, y[:, -1:]], 1), torch.cat([clean_x, clean_y[:, -1:]], 1)
    assert torch.equal(full.sort(1).values, clean_full.sort(1).values)  # a permutation
    trainer.reset_knob("sequence_shuffle")
    trainer.set_knob("domain_shift", 0.25)
    x, _ = trainer._next_batch(8)
    assert (x[-2:] == ord("z")).all() and not (x[:-2] == ord("z")).any(1).all()
    trainer.reset_knob("domain_shift")
    trainer.set_knob("label_noise", 1.0)
    x, y = trainer._next_batch(8)
    assert (y != x.roll(-1, 1))[:, :-1].float().mean() > 0.9  # targets no longer the text


def test_batch_shrink_keeps_the_data_order_of_the_rest_of_the_run() -> None:
    trainer = CausalLMTrainer(**SMALL)
    trainer.reset(0)
    twin = trainer.fork()
    small, after = trainer._next_batch(1)[0], trainer._next_batch(4)[0]
    full, twin_after = twin._next_batch(4)[0], twin._next_batch(4)[0]
    assert torch.equal(small, full[:1]) and torch.equal(after, twin_after)


def test_performance_range_is_the_uniform_guess_to_perfect() -> None:
    trainer = CausalLMTrainer(**SMALL)
    assert trainer.performance_range == (-math.log(256), 0.0)
    trainer.reset(0)
    assert -math.log(256) < trainer.evaluate() < -5.0  # an untrained model guesses uniformly
    trainer.apply_event("weight_rescale", 100.0)
    trainer.advance(SMALL["eval_every"])
    assert trainer.evaluate() == -math.log(256)  # worse than guessing scores the floor


def test_a_from_pretrained_model_from_a_local_directory_trains(tmp_path: Path) -> None:
    config = GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=3, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = CausalLMTrainer(model=model, **SMALL)
    assert trainer.performance_range[0] == -math.log(300)
    trainer.reset(0)
    first = trainer.evaluate()
    trainer.advance(20)
    assert trainer.evaluate() > first + 0.5
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    trainer.apply_event("block_reset", 1.0)  # works on weights transformers marked loaded
    assert not torch.equal(weights, torch.cat([p.detach().flatten()
                                               for p in trainer.model.parameters()]))  # fmt: skip
    trainer.reset(1)
    assert trainer.evaluate() == first  # every seed starts from the given weights
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())


class _Rows:
    """A duck-typed ``datasets.Dataset`` (the real one is an optional dependency)."""

    column_names = ("text",)

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    def __getitem__(self, column: str) -> list[str]:
        return self._texts


def test_a_tokenizer_a_text_directory_and_a_dataset_work(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "the",
        "run",
        "collapsed",
        "and",
        "the",
        "controller",
        "rolled",
        "it",
        "back",
        "to",
        "a",
        "good",
        "fork",
    ]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="a")
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(words, 200)) for _ in range(4)]
    for i, document in enumerate(documents):
        (tmp_path / f"{i}.txt").write_text(document)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=16, n_embd=16,
                                       n_layer=1, n_head=2))  # fmt: skip
    for text in (tmp_path, _Rows(documents)):
        trainer = CausalLMTrainer(model=model, tokenizer=tokenizer, text=text, shift_text=text,
                                  **SMALL)  # fmt: skip
        assert trainer._data.train.max() < len(words)
        trainer.reset(0)
        trainer.set_knob("token_corruption", 1.0)
        assert np.isfinite(trainer.advance(4).values).all()


def test_documents_in_memory_are_the_same_corpus_as_the_files(tmp_path: Path) -> None:
    documents = [f"document {i}: " + "the run trains, then collapses. " * 40 for i in range(3)]
    for i, document in enumerate(documents):
        (tmp_path / f"{i}.txt").write_text(document)
    in_memory = CausalLMTrainer(text=documents, shift_text=tuple(documents), **SMALL)
    on_disk = CausalLMTrainer(text=tmp_path, shift_text=tmp_path, **SMALL)
    assert torch.equal(in_memory._data.train, on_disk._data.train)
    assert torch.equal(in_memory._data.val, on_disk._data.val)
    in_memory.reset(0)
    assert np.isfinite(in_memory.advance(2).values).all()


def test_a_document_passed_as_a_string_is_a_clear_error() -> None:
    document = "the run trains, then collapses. " * 100  # 3,200 characters: no file name
    with pytest.raises(ValueError, match=r"text must be an existing text file .* a 3200-char"):
        CausalLMTrainer(text=document, **SMALL)
    with pytest.raises(ValueError, match=r"documents in memory go in a list: shift_text=\["):
        CausalLMTrainer(shift_text=document, **SMALL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"text": "/no/such/file"}, "text must be an existing text file"),
        ({"text": object()}, "text must be a path, a list of strings"),
        ({"text": []}, "text must hold at least one document"),
        ({"shift_text": ["a document", 3]}, r"shift_text\[1\] must be a string"),
        ({"text": _Rows(["too short"])}, "text has 9 tokens; seq_len 16 needs at least 170"),
        ({"model_config": {"n_layer": "two"}}, "model_config is not a valid GPT2Config"),
        ({"model_config": {"n_embd": 65}}, "model_config is not a valid GPT2Config"),
        ({"model": torch.nn.Linear(2, 2)}, "model must be a transformers causal LM"),
        (
            {"model": GPT2LMHeadModel(GPT2Config(n_positions=8, n_embd=8, n_layer=1, n_head=1))},
            "seq_len must be <= the model's context 8",
        ),  # fmt: skip
        (
            {"model": GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=8, n_layer=1, n_head=1))},
            "vocab_size 100 is smaller",
        ),  # fmt: skip
    ],
)
def test_bad_configuration_raises_a_value_error_naming_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CausalLMTrainer(**{**SMALL, **kwargs})


def test_env_info_carries_the_perplexity() -> None:
    env = gym.make("trainenv/TinyLM-v0", k=1, max_steps=2, observation="telemetry").unwrapped
    env.reset(seed=0)
    info = env.step(0)[4]
    assert info["perplexity"] == pytest.approx(math.exp(-info["performance"]))
