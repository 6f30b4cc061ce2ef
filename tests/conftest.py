from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fakeapi
from tests.oracle import ADMISSION_REVIEWS, ISTIO_INJECTED
from webhook.config import Settings


def pytest_configure(config: pytest.Config) -> None:
    # The shared fixtures are the real input; without them most tests would collect
    # nothing and pass, so refuse to run instead.
    for folder in (ISTIO_INJECTED, ADMISSION_REVIEWS):
        if not any(folder.glob("*.json")):
            raise pytest.UsageError(
                f"no fixtures in {folder}: the suite needs ../shared/fixtures beside the repo"
            )


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def fake() -> Iterator[fakeapi.FakeAPI]:
    """A fake Kubernetes API server on 127.0.0.1 (audit and doctor tests)."""
    api = fakeapi.FakeAPI()
    with fakeapi.running(api):
        yield api


@pytest.fixture
def kubeconfig(fake: fakeapi.FakeAPI, tmp_path: Path) -> Path:
    return fake.kubeconfig(tmp_path)
