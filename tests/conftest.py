"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

TRAINED_TINY = Path(__file__).parent / "data" / "trained_tiny.safetensors"


@pytest.fixture(scope="session")
def trained_tiny_model():
    """A VocaLiST.tiny() trained on the synthetic corpus by scripts/train_test_model.py (committed, ~1.3 MB).

    Training one takes longer than the test budget on a 2-core CPU, so the file is made once and committed;
    the tests that need it skip when it is absent.
    """
    if not TRAINED_TINY.is_file():
        pytest.skip(f"{TRAINED_TINY.name} not present: run scripts/train_test_model.py to make it")
    from mtdistill.models import VocaLiST

    return VocaLiST.from_checkpoint(TRAINED_TINY)
