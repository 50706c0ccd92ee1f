"""Shared fixtures: the real MNIST folder, and Hydra-composed configs for direct `train(cfg)` calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from glimpse.config import CONF_DIR

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def data_root() -> Path:
    """GLIMPSE_DATA if set (CI sets it), else ../shared/datasets beside the checkout."""
    return Path(os.environ.get("GLIMPSE_DATA", SHARED))


def has_mnist() -> bool:
    return (data_root() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


needs_mnist = pytest.mark.skipif(not has_mnist(), reason="real MNIST not found; set GLIMPSE_DATA")


def make_cfg(*overrides: str):
    """The config `python -m glimpse.train <overrides>` would run, with the data root pointed at real MNIST."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"data.root={data_root()}", "trainer.progress=false", *overrides])
