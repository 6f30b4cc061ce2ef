"""The README documents every setting, and the commands it promises exist."""

from __future__ import annotations

import re
from pathlib import Path

from webhook.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_its_environment_variable_and_default() -> None:
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(
            r"^\| `(\w+)` \| `(ISTIO_SPIFFE_WEBHOOK_\w+)` \| ([^|]+) \|", README, re.M
        )
    }
    assert set(rows) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        env, default = rows[name]
        assert env == f"ISTIO_SPIFFE_WEBHOOK_{name.upper()}"
        assert default.strip() == ("(derived)" if field.default == "" else f"`{field.default}`")


def test_readme_shows_the_two_commands_and_each_make_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make (\w+)`", README):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make run" in README and "make test" in README
