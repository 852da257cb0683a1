"""The corpus of a causal-LM run: documents from a path, a list or a dataset, tokenised and
split into training and validation (the last 10 % of tokens)."""

from __future__ import annotations

import email
import json
import math
import os
import pydoc_data.topics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

VAL_FRACTION = 0.1  # the last 10 % of the corpus's tokens are the validation split
BYTE_VOCAB = 256


class Corpus:
    """Token ids of a text source split into training and validation (shared by forks).

    Args:
        texts: The documents, joined with a blank line.
        tokenizer: A transformers tokenizer, or ``None`` for UTF-8 bytes.
        window: Tokens per training window (``seq_len + 1``).
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, window: int) -> None:
        tokens = tokenize("\n\n".join(texts), tokenizer)
        if len(tokens) * VAL_FRACTION < window:
            raise ValueError(
                f"text has {len(tokens)} tokens; seq_len {window - 1} needs at least "
                f"{math.ceil(window / VAL_FRACTION)} (10 % of them for validation)"
            )
        n_val = round(VAL_FRACTION * len(tokens))
        self.train, self.val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
        self.window = window
        self.n_windows = len(self.train) - window + 1
        self._offsets = torch.arange(window)

    def windows(self, starts: np.ndarray) -> torch.Tensor:
        """Training windows at ``starts``, shape ``(len(starts), window)``."""
        return self.train[torch.from_numpy(starts)[:, None] + self._offsets]

    def val_windows(self, n: int) -> torch.Tensor:
        """``n`` evenly spaced validation windows, shape ``(n, window)``."""
        starts = torch.linspace(0, len(self.val) - self.window, n).long()
        return self.val[starts[:, None] + self._offsets]


def tokenize(text: str, tokenizer: Any) -> torch.Tensor:
    if tokenizer is None:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long)


def documents(source: Any, field: str) -> list[str]:
    """The documents of ``source``: a path (a text file, or a directory whose files below it
    are read sorted, as UTF-8 with undecodable bytes replaced), a list or tuple of strings
    (documents in memory), or an object with a ``"text"`` column (e.g. a ``datasets.Dataset``).

    A ``ValueError`` naming ``field`` for anything else, including a string that is not an
    existing path (documents in memory go in a list).
    """
    if isinstance(source, (str, os.PathLike)):
        return _read(source, field)
    if "text" in getattr(source, "column_names", ()):
        return [str(t) for t in source["text"]]
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError(f"{field} must hold at least one document, got an empty list")
        for i, document in enumerate(source):
            if not isinstance(document, str):
                raise ValueError(
                    f"{field}[{i}] must be a string (a document), got {type(document).__name__}"
                )
        return list(source)
    raise ValueError(
        f"{field} must be a path, a list of strings (documents) or a dataset with a 'text' "
        f"column, got {type(source).__name__}"
    )


def _read(source: str | os.PathLike[str], field: str) -> list[str]:
    path = Path(source)
    try:
        if path.is_file():
            return [path.read_text(encoding="utf-8", errors="replace")]
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    except OSError:  # the OS refused the name (a document passed as a path: "name too long")
        files = []
    if files:
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]
    name = str(source)
    shown = repr(name) if len(name) <= 80 else f"a {len(name)}-character string"
    raise ValueError(
        f"{field} must be an existing text file or non-empty directory, got {shown}; "
        f"documents in memory go in a list: {field}=[document, ...]"
    )


def pydoc_texts() -> list[str]:
    topics = pydoc_data.topics.topics
    return [topics[key] for key in sorted(topics)]


def stdlib_source() -> list[str]:
    """The Python source of the standard library's ``json`` and ``email`` packages (~426 kB)."""
    roots = [Path(str(package.__file__)).parent for package in (json, email)]
    return [p.read_text(encoding="utf-8") for root in roots for p in sorted(root.rglob("*.py"))]
