"""Plain data and small pure functions shared by every part of trainenv (no torch models)."""
