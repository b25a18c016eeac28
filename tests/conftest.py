"""Shared fixtures: the parity folder (``../shared/parity`` beside the checkout) and a tiny CLIP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # never touch the user's cache from tests
    os.environ["OVSS_CACHE"] = str(tmp_path_factory.mktemp("ovss-cache"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY / "manifest.json").is_file():
        pytest.skip(f"parity fixtures not found at {PARITY} (they live in shared/parity beside the checkout)")
    return PARITY


@pytest.fixture(scope="session")
def tiny_clip_files(parity_dir: Path) -> tuple[str, str]:
    """(config JSON, safetensors) of the tiny random CLIP ViT-B/16 of the parity fixtures."""
    return str(parity_dir / "tiny_clip_b16.json"), str(parity_dir / "tiny_clip_b16.safetensors")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_files: tuple[str, str]):
    from ovss.backbones.clip import load_clip

    return load_clip(*tiny_clip_files)
