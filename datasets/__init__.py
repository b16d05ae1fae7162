"""Synthetic bank customer tables and the committed samples (see :mod:`psiq_datasets.generate`).

``datasets/sample/`` holds bank_a.csv and bank_b.csv (10,000 customers each, 30% shared),
blacklist.csv (20,000 IDs) and expected.json, generated with seed 20261123.
"""

from __future__ import annotations

from pathlib import Path

from .generate import generate, validate_id_number

__all__ = ["generate", "validate_id_number", "sample_dir", "SAMPLE_SEED"]

SAMPLE_SEED = 20261123


def sample_dir() -> Path:
    """Directory of the committed sample files (installed as package data)."""
    return Path(__file__).resolve().parent / "sample"
