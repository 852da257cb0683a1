"""Causal language-model training as a run: any transformers causal LM on a text corpus.

The default recipe needs no download: a tiny GPT-2 built from a ``GPT2Config`` (2 layers, 64
wide, 2 heads, byte-level vocabulary of 256, context 64) learns the reference prose Python
ships in ``pydoc_data.topics`` (about 466k bytes), tokenised as raw UTF-8 bytes. A user may
pass their own model (e.g. ``AutoModelForCausalLM.from_pretrained(local_dir)``), a
transformers tokenizer, and a text file, a directory of text files, a list of documents or a
``datasets.Dataset``.

Requires the ``lm`` extra (``pip install trainenv[lm]``): this module imports transformers,
so ``trainenv.trainers`` exports :class:`CausalLMTrainer` lazily.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainenv.core import knobs as K
from trainenv.core.knobs import KnobSpec
from trainenv.core.rng import torch_generator
from trainenv.core.telemetry import ChannelSpec
from trainenv.trainers.base import TrainerSpec, check_positive_int, torch_threads
from trainenv.trainers.lm_corpus import (
    BYTE_VOCAB,
    Corpus,
    documents,
    pydoc_texts,
    stdlib_source,
)
from trainenv.trainers.torch import (
    TorchTrainer,
    isolated_global_rng,
    rescale_weights,
)

try:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("CausalLMTrainer needs transformers: pip install 'trainenv[lm]'") from error

TOKEN_CORRUPTION = KnobSpec(
    "token_corruption", 0.0, 0.0, 1.0, "fraction of input tokens replaced by random tokens"
)
DOMAIN_SHIFT = KnobSpec(
    "domain_shift", 0.0, 0.0, 1.0, "fraction of each batch's sequences drawn from the shift source"
)
SEQUENCE_SHUFFLE = KnobSpec(
    "sequence_shuffle", 0.0, 0.0, 1.0, "fraction of each sequence's positions permuted randomly"
)
LOSS_SCALE = KnobSpec("loss_scale", 1.0, 1e-6, 1e6, "multiplier on the training loss")
Z_LOSS = KnobSpec(
    "z_loss", 0.0, 0.0, 1e3, "coefficient of the mean squared log-partition of the logits"
)
LOGIT_SOFTCAP = KnobSpec(
    "logit_softcap", math.inf, 1e-3, math.inf, "logits mapped to cap * tanh(logits / cap)"
)
MIN_LR_RATIO = 0.1  # the cosine schedule decays to this fraction of the peak, then holds
CHANNELS = (
    ChannelSpec("train_loss", "cross-entropy of the update's batch, nats per token"),
    ChannelSpec(
        "val_loss",
        "cross-entropy on the validation subset at the latest pass, nats",
        role="performance",
    ),
    ChannelSpec("grad_norm", "global L2 norm of the gradient before clipping"),
    ChannelSpec("update_ratio", "L2 norm of the weight update over the weight norm"),
    ChannelSpec("weight_norm", "global L2 norm of the weights"),
    ChannelSpec("max_logit", "largest logit magnitude in the update's batch"),
    ChannelSpec("token_entropy", "mean entropy of the next-token predictions, nats"),
    ChannelSpec("lr", "learning rate in force", role="knob"),
)
EVENTS = (
    "optimizer_reset", "warmup_restart", "weight_noise", "weight_rescale", "layer_rescale",
    "block_reset",
)  # fmt: skip


class CausalLMTrainer(TorchTrainer):
    """AdamW with a warmup + cosine schedule on a causal language model.

    One update is one optimizer step on one batch of ``batch_size`` windows of
    ``seq_len + 1`` tokens drawn uniformly from the training split (positions from the run's
    own generator). Performance is minus the validation loss in nats per token, on a fixed
    validation subset (``eval_batches`` batches of evenly spaced windows, the same for every
    seed) evaluated every ``eval_every`` updates; :attr:`perplexity` is its exponential.
    ``performance_range`` is ``(-ln V, 0)`` for an output vocabulary of ``V`` tokens: the loss
    of a uniform guess (``-ln 256`` ~ -5.55 for bytes) up to a perfect prediction. A run worse
    than the uniform guess scores the floor (its telemetry keeps the raw loss), so normalised
    performance stays in ``[0, 1]``.

    Args:
        model: A transformers causal LM; default: a tiny GPT-2 built afresh from its config at
            every ``reset`` (the seed sets its initialisation). A given model is copied at
            every ``reset``: all seeds start from its weights and differ in data order and
            dropout.
        tokenizer: A transformers tokenizer; default: UTF-8 bytes as token ids 0..255.
        text: The corpus: a path to a text file or a directory of text files (every file
            below it, sorted, read as UTF-8 with undecodable bytes replaced), a list of
            strings (documents in memory), or an object with a ``"text"`` column such as a
            ``datasets.Dataset``; default: ``pydoc_data.topics``. A string is always a path.
            Documents are joined with a blank line; the last 10 % of tokens are the
            validation split (the same for every seed).
        shift_text: The ``domain_shift`` source, same forms as ``text``; default: the Python
            source code of the standard library's ``json`` and ``email`` packages.
        lr: Peak AdamW learning rate (knobs scale it).
        batch_size: Sequences per update (``batch_shrink`` divides it).
        seq_len: Tokens per sequence (the context of the default model).
        warmup: Updates of linear warmup.
        total_updates: Updates of the cosine decay's horizon; after it the learning rate holds
            at ``MIN_LR_RATIO`` of the peak.
        weight_decay: AdamW's decoupled weight decay.
        eval_every: Updates between validation passes.
        eval_batches: Batches of ``batch_size`` sequences in the validation subset.
        dropout: Dropout probability of every ``nn.Dropout`` in the model (the ``dropout``
            knob's default).
        model_config: Extra ``GPT2Config`` fields for the default model (e.g. ``n_layer``).
        device: Where the run trains: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (the model, batches
            and validation windows live there; see :class:`TorchTrainer`).
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        tokenizer: Any = None,
        text: str | os.PathLike[str] | Sequence[str] | Any = None,
        shift_text: str | os.PathLike[str] | Sequence[str] | Any = None,
        *,
        lr: float = 3e-3,
        batch_size: int = 16,
        seq_len: int = 64,
        warmup: int = 20,
        total_updates: int = 300,
        weight_decay: float = 0.01,
        eval_every: int = 10,
        eval_batches: int = 2,
        dropout: float = 0.0,
        model_config: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                            ("total_updates", total_updates), ("eval_every", eval_every),
                            ("eval_batches", eval_batches)):  # fmt: skip
            check_positive_int(name, value)
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if model is not None and model_config:
            raise ValueError("model_config configures the default model: pass it or model")
        self.lr, self.batch_size, self.seq_len = float(lr), int(batch_size), int(seq_len)
        self.warmup, self.total_updates = int(warmup), int(total_updates)
        self.weight_decay, self.eval_every = float(weight_decay), int(eval_every)
        self._config = _default_config(seq_len, dropout, model_config) if model is None else None
        self._template = None if model is None else _checked_model(model, seq_len, tokenizer)
        self.dropout = float(dropout)
        self._n_tokens = BYTE_VOCAB if tokenizer is None else len(tokenizer)
        super().__init__(device=device)
        with torch_threads(self.num_threads):  # as the run's work (see Trainer: forked workers)
            self._data = Corpus(documents(text, "text") if text is not None else pydoc_texts(),
                                tokenizer, seq_len + 1)  # fmt: skip
            shift = stdlib_source() if shift_text is None else documents(shift_text, "shift_text")
            self._shift = Corpus(shift, tokenizer, seq_len + 1)
            self._val_windows = self._data.val_windows(self.batch_size * int(eval_batches))
            self._val_windows = self._val_windows.to(self.device)

    def _declare(self) -> TrainerSpec:
        vocab = (self._config or self._template.config).vocab_size  # type: ignore[union-attr]
        dropout = KnobSpec("dropout", self.dropout, 0.0, 0.95, "dropout probability of the model")
        return TrainerSpec(
            channels=CHANNELS,
            knobs=(
                K.LR_SCALE,
                K.LR_BACKOFF,
                K.GRAD_CLIP,
                K.BATCH_SHRINK,
                K.LABEL_NOISE,
                TOKEN_CORRUPTION,
                DOMAIN_SHIFT,
                SEQUENCE_SHUFFLE,
                LOSS_SCALE,
                Z_LOSS,
                LOGIT_SOFTCAP,
                dropout,
            ),
            events=EVENTS,
            performance_range=(-math.log(vocab), 0.0),  # a uniform guess to a perfect one
        )

    # -- protocol -----------------------------------------------------------------------------
    def _build(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        if self._config is not None:
            model = GPT2LMHeadModel(self._config)  # initialised from the run's generator
        else:
            model = cast(GPT2LMHeadModel, copy.deepcopy(self._template))
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True
        )
        return model, optimizer

    def _reset(self, seed: int) -> None:
        super()._reset(seed)
        model = self._model()
        self._dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        self._block = _middle_block(model)
        self._data_rng = np.random.default_rng(seed)
        self._position = 0  # updates since the learning-rate schedule (re)started
        self._validate()

    def evaluate(self) -> float:
        return max(-self._val_loss, self.performance_range[0])

    @property
    def perplexity(self) -> float:
        """``exp`` of the latest validation loss (``inf`` once it overflows)."""
        return math.inf if self._val_loss > 709.0 else math.exp(self._val_loss)

    def info(self) -> dict[str, float]:
        return {"perplexity": self.perplexity}

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "data_rng": copy.deepcopy(self._data_rng),
            "position": self._position,
            "val_loss": self._val_loss,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._data_rng = copy.deepcopy(state["data_rng"])
        self._position, self._val_loss = state["position"], state["val_loss"]

    def _apply_event(self, name: str, magnitude: float) -> None:
        if name == "warmup_restart":
            self._position = round(self._position * (1.0 - magnitude))
        elif name == "layer_rescale":
            rescale_weights(self._block.parameters(), magnitude)
        elif name == "block_reset":
            rng = torch_generator(self.perturbation_rng(name))
            _reset_block(self._model(), self._block, magnitude, rng)
        else:
            super()._apply_event(name, magnitude)

    def _shared(self) -> Iterable[object]:
        return (self._data, self._shift, self._val_windows, self._template, self._config)

    # -- one update ---------------------------------------------------------------------------
    def _update(self, number: int) -> list[float]:
        """Update number ``number`` (1-based) of the run; returns its telemetry row."""
        knobs = self._knobs
        for module in self._dropouts:
            module.p = knobs["dropout"]
        x, y = self._next_batch(max(1, round(self.batch_size / knobs["batch_shrink"])))
        x, y = x.to(self.device), y.to(self.device)
        lr = self.lr * self.schedule(self._position) * knobs["lr_scale"] * knobs["lr_backoff"]
        logits = self._logits(x)
        log_probs = torch.log_softmax(logits, dim=-1)
        loss = nn.functional.nll_loss(log_probs.flatten(0, 1), y.flatten())
        objective = loss
        if knobs["z_loss"] > 0:
            objective = objective + knobs["z_loss"] * logits.logsumexp(-1).pow(2).mean()
        grad_norm = self._optimizer_step(objective * knobs["loss_scale"], lr)
        self._position += 1
        weight_norm, update_ratio = self._weight_change()
        with torch.no_grad():
            max_logit = max(abs(float(v)) for v in torch.aminmax(logits))  # no |logits| copy
            tokens = log_probs.numel() // log_probs.shape[-1]
            entropy = -float(torch.dot(log_probs.exp().flatten(), log_probs.flatten())) / tokens
        if number % self.eval_every == 0:
            self._validate()
        return [
            loss.item(), self._val_loss, grad_norm, update_ratio, weight_norm, max_logit,
            entropy, lr,
        ]  # fmt: skip

    def schedule(self, position: int) -> float:
        """The learning-rate multiplier ``position`` updates after the schedule (re)started:
        linear warmup to 1, cosine decay to ``MIN_LR_RATIO`` at ``total_updates``, then flat."""
        if position < self.warmup:
            return (position + 1) / self.warmup
        span = max(1, self.total_updates - self.warmup)
        progress = min(1.0, (position - self.warmup) / span)
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))

    def _next_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, shape ``(size, seq_len)`` each, perturbed by the data knobs.

        A full batch of positions is drawn every update whatever ``size`` is, so a shrunk
        batch does not shift the data order of the rest of the run.
        """
        starts = self._data_rng.integers(self._data.n_windows, size=self.batch_size)[:size]
        windows = self._data.windows(starts)
        knobs = self._knobs
        if knobs["domain_shift"] > 0:
            windows = self._shift_rows(windows, knobs["domain_shift"])
        if knobs["sequence_shuffle"] > 0:
            windows = self._shuffle_positions(windows, knobs["sequence_shuffle"])
        x, y = windows[:, :-1], windows[:, 1:]
        if knobs["token_corruption"] > 0:
            x = self._replace_tokens(x, knobs["token_corruption"], "token_corruption")
        if knobs["label_noise"] > 0:
            y = self._replace_tokens(y, knobs["label_noise"], "label_noise")
        return x, y

    def _shift_rows(self, windows: torch.Tensor, fraction: float) -> torch.Tensor:
        """The last ``ceil(fraction * rows)`` windows replaced by windows of the shift source
        (at positions from the intervention's own generator)."""
        n = _share(fraction, len(windows))
        rng = self.perturbation_rng("domain_shift")
        windows = windows.clone()
        windows[len(windows) - n :] = self._shift.windows(
            rng.integers(self._shift.n_windows, size=n)
        )
        return windows

    def _shuffle_positions(self, windows: torch.Tensor, fraction: float) -> torch.Tensor:
        """In each window, ``ceil(fraction * length)`` random positions exchange their tokens
        (a random permutation among themselves); inputs and targets both see the result."""
        rows, length = windows.shape
        n = _share(fraction, length)
        rng = self.perturbation_rng("sequence_shuffle")
        chosen = torch.from_numpy(np.argsort(rng.random((rows, length)), axis=1)[:, :n])
        permuted = chosen.gather(1, torch.from_numpy(np.argsort(rng.random((rows, n)), axis=1)))
        windows = windows.clone()
        windows.scatter_(1, chosen, windows.gather(1, permuted))
        return windows

    def _replace_tokens(self, tokens: torch.Tensor, fraction: float, name: str) -> torch.Tensor:
        rng = self.perturbation_rng(name)
        replace = torch.from_numpy(rng.random(tokens.shape) < fraction)
        random_tokens = torch.from_numpy(rng.integers(self._n_tokens, size=tokens.shape))
        return torch.where(replace, random_tokens, tokens)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, seq_len, vocab)``, soft-capped while ``logit_softcap`` is set."""
        logits = self._model()(input_ids=x, use_cache=False).logits
        cap = self._knobs["logit_softcap"]
        return logits if math.isinf(cap) else cap * torch.tanh(logits / cap)

    def _validate(self) -> None:
        model = self._model()
        model.eval()
        with torch.no_grad():
            losses = [
                float(nn.functional.cross_entropy(self._logits(w[:, :-1]).flatten(0, 1),
                                                  w[:, 1:].flatten()))
                for w in self._val_windows.split(self.batch_size)
            ]  # fmt: skip
        model.train()
        self._val_loss = sum(losses) / len(losses)

    def _model(self) -> PreTrainedModel:
        return cast(PreTrainedModel, super()._model())


def _share(fraction: float, n: int) -> int:
    """``ceil(fraction * n)``: at least one of ``n`` items whenever ``fraction > 0``."""
    return math.ceil(fraction * n - 1e-9)  # the tolerance keeps 0.25 * 8 at 2, not 3


def _default_config(
    seq_len: int, dropout: float, overrides: Mapping[str, Any] | None
) -> GPT2Config:
    settings = {
        "vocab_size": BYTE_VOCAB, "n_positions": seq_len, "n_embd": 64, "n_layer": 2,
        "n_head": 2, "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "bos_token_id": None, "eos_token_id": None, "use_cache": False, **(overrides or {}),
    }  # fmt: skip
    try:
        config = GPT2Config(**settings)
        with torch.device("meta"):  # builds the modules without allocating their weights
            GPT2LMHeadModel(config)
    except Exception as error:  # transformers raises several types for a bad config
        raise ValueError(f"model_config is not a valid GPT2Config: {error}") from None
    return config


def _checked_model(model: Any, seq_len: int, tokenizer: Any) -> PreTrainedModel:
    """``model`` if it can train on this corpus, else a ``ValueError`` saying why."""
    if not isinstance(model, PreTrainedModel) or not hasattr(model.config, "vocab_size"):
        raise ValueError(f"model must be a transformers causal LM, got {type(model).__name__}")
    context = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len must be <= the model's context {context}, got {seq_len}")
    needed = BYTE_VOCAB if tokenizer is None else len(tokenizer)
    if model.config.vocab_size < needed:
        raise ValueError(
            f"model's vocab_size {model.config.vocab_size} is smaller than the tokenizer's "
            f"{needed} tokens (byte-level without a tokenizer: 256)"
        )
    _middle_block(model)
    return model


def _middle_block(model: nn.Module) -> nn.Module:
    """The middle transformer block (index ``n // 2`` of the model's longest
    ``nn.ModuleList`` of same-type modules): what ``layer_rescale`` and ``block_reset`` hit."""
    stacks = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1
    ]
    if not stacks:
        raise ValueError(f"model {type(model).__name__} has no stack of transformer blocks")
    blocks = max(stacks, key=len)
    return blocks[len(blocks) // 2]


def _reset_block(
    model: PreTrainedModel, block: nn.Module, mix: float, rng: torch.Generator
) -> None:
    """Move every weight of ``block`` a fraction ``mix`` toward a fresh initialisation by the
    model's own initialiser, drawn from ``rng`` (not from the run's training generator)."""
    fresh = copy.deepcopy(block)
    for item in (*fresh.modules(), *fresh.parameters()):
        # transformers skips tensors it marks initialised (e.g. after from_pretrained).
        vars(item).pop("_is_hf_initialized", None)
    with isolated_global_rng(), torch.no_grad():
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        fresh.apply(model._init_weights)
        for param, new in zip(block.parameters(), fresh.parameters(), strict=True):
            param.lerp_(new, mix)
