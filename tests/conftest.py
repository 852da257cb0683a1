"""Test-wide settings: one torch thread (tiny models slow 40-90x with two busy threads on two
cores) and no model-hub access (a stray hub call hangs ~23 s before failing)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
