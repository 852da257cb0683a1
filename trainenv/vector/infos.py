"""Gymnasium's batched vector infos, one dict per sub-environment again."""

from __future__ import annotations

from typing import Any

import numpy as np


def unbatch_infos(infos: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's vector infos (arrays with ``_key`` masks, nested dicts) as ``n`` dicts:
    sub-environment ``i`` gets each key its mask marks, with element ``i`` as the value."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in infos.items():
        if key.startswith("_") and key[1:] in infos:
            continue  # a mask
        mask = infos.get(f"_{key}", np.ones(n, dtype=bool))
        values = unbatch_infos(value, n) if isinstance(value, dict) else value
        for i in np.flatnonzero(mask):
            out[i][key] = values[i]
    return out
