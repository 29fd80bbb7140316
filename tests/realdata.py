"""Where the tests find the real public motorsport data, and what they do when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_root() -> Path:
    """The folder of real public motorsport data (``FEATURESTORE_SHARED_DATA``, by default
    ``../shared/data`` beside the checkout). Absent: the test skips, saying which variable to
    set, unless ``FEATURESTORE_TEST_REAL_DATA=1`` (CI), where it fails."""
    root = Path(os.environ.get("FEATURESTORE_SHARED_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not root.is_dir():
        if os.environ.get("FEATURESTORE_TEST_REAL_DATA") == "1":
            pytest.fail(f"FEATURESTORE_TEST_REAL_DATA=1 but the real data folder {root} is "
                        "missing; set FEATURESTORE_SHARED_DATA to the folder holding it")
        pytest.skip(f"real data folder {root} is absent: set FEATURESTORE_SHARED_DATA to the "
                    "folder holding the motorsport files to run this test")
    return root
