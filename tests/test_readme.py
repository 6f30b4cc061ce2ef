"""The README and docs/ document every setting, and every link and `make` target they
promise exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from webhook.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 400

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def relative_links(page: Path) -> list[tuple[str, str]]:
    """(path, anchor) of every Markdown link in `page` that is not a URL."""
    links = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        links.append((path, anchor))
    return links


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def make_targets_mentioned(page: Path) -> set[str]:
    text = page.read_text()
    inline = re.findall(r"`make ([a-z][\w-]*)[^`]*`", FENCE.sub("", text))
    in_code = [
        m
        for block in FENCE.findall(text)
        for m in re.findall(r"^\s*(?:\$ )?make ([a-z][\w-]*)", block, re.M)
    ]
    return set(inline) | set(in_code)


def test_every_setting_is_documented_with_its_environment_variable_and_default() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(
            r"^\| `(\w+)` \| `(ISTIO_SPIFFE_WEBHOOK_\w+)` \| ([^|]+) \|", text, re.M
        )
    }
    assert set(rows) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        env, default = rows[name]
        assert env == f"ISTIO_SPIFFE_WEBHOOK_{name.upper()}"
        assert default.strip() == ("(derived)" if field.default == "" else f"`{field.default}`")


def test_readme_shows_make_run_and_make_test_and_stays_short() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
    assert len(text.splitlines()) <= README_MAX_LINES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_mentioned_exists(page: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = make_targets_mentioned(page)
    missing = sorted(t for t in targets if not re.search(rf"^{t}:", makefile, re.M))
    assert missing == [], "`make e2e` comes with issue 10's branch"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for path, anchor in relative_links(page):
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{path}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{path}#{anchor}: no such heading")
    assert broken == [], "docs/verify.md and docs/template.md come with issues 11 and 12"


def test_the_readme_links_every_page_in_docs() -> None:
    linked = {
        (README.parent / path).resolve().relative_to(ROOT).as_posix()
        for path, _ in relative_links(README)
        if path
    }
    assert {p.relative_to(ROOT).as_posix() for p in DOCS} <= linked


def test_slug_follows_githubs_anchors() -> None:
    assert slug("`failurePolicy: Fail`, and what to do when the webhook is down") == (
        "failurepolicy-fail-and-what-to-do-when-the-webhook-is-down"
    )
    assert slug("Why it exists: what was observed, and what Istio's code says") == (
        "why-it-exists-what-was-observed-and-what-istios-code-says"
    )
    assert slug("`make e2e`: a real API server") == "make-e2e-a-real-api-server"
