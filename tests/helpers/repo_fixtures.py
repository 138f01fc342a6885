"""Fixtures the repository tests share: a fresh key, and an encrypted repository made with it."""
from __future__ import annotations

import pytest

from tinabs_tasks.repo import keys
from tinabs_tasks.repo.layout import init_repository


@pytest.fixture
def key() -> bytes:
    return keys.generate_key()


@pytest.fixture
def repo(tmp_path, key):
    return init_repository(str(tmp_path / "repo"), key=key)
