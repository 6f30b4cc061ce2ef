from __future__ import annotations

import pytest

from webhook.config import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings()
