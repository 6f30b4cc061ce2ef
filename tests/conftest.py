from __future__ import annotations

import pytest

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
