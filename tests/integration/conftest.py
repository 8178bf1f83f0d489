"""Fixtures for Git-level integration tests: sandboxed users whose daemons always get stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.gitenv import GitEnv


@pytest.fixture
def make_user(tmp_path: Path) -> Iterator[Callable[..., GitEnv]]:
    """Create users (hosts); every daemon they started, by hand or autostart, is stopped after."""
    made: list[GitEnv] = []

    def make(name: str, *, start: bool = True, **env: str) -> GitEnv:
        genv = GitEnv.create(tmp_path / name)
        genv.env.update(env)
        made.append(genv)
        if start:
            genv.start_daemon()
        return genv

    yield make
    for genv in made:
        genv.stop_daemon()
        genv.stop_autostarted_daemon()


@pytest.fixture
def user(make_user: Callable[..., GitEnv]) -> GitEnv:
    return make_user("user1")
