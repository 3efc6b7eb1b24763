"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

TRAINED_TINY = Path(__file__).parent / "data" / "trained_tiny.safetensors"


@pytest.fixture(scope="session")
def trained_tiny_model():
    """A tiny VocaLiST trained on the synthetic corpus, committed as tests/data/trained_tiny.safetensors.

    Made once with configs/synthetic_tiny.yaml (recipe header: synth -> prepare -> train, ~20 min on 2 CPU cores)
    and committed (~0.3 MB); the offset-recovery tests use it. They skip only if the file is removed.
    """
    if not TRAINED_TINY.is_file():
        pytest.skip(f"tests/data/{TRAINED_TINY.name} not present (no trained synthetic-corpus model committed yet)")
    from mtdistill.models import VocaLiST

    return VocaLiST.from_checkpoint(TRAINED_TINY)
