"""The README and docs/ document every setting, and every link and `make` target they
promise exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from webhook.config import Settings
from webhook.rewrite import Contract, rewrite

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
    assert missing == [], "a page names a make target the Makefile does not have"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for path, anchor in relative_links(page):
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{path}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{path}#{anchor}: no such heading")
    assert broken == [], "a page links a file or heading that does not exist"


def test_the_readme_links_every_page_in_docs() -> None:
    linked = {
        (README.parent / path).resolve().relative_to(ROOT).as_posix()
        for path, _ in relative_links(README)
        if path
    }
    assert {p.relative_to(ROOT).as_posix() for p in DOCS} <= linked


def documented_warnings() -> list[str]:
    """The warning texts docs/observability.md lists: the backticked start of each bullet
    of its Warnings section, whitespace normalized (a text may wrap across lines)."""
    text = (ROOT / "docs" / "observability.md").read_text()
    section = text.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    return [" ".join(m.split()) for m in re.findall(r"^- `([^`]+)`", section, re.M)]


def test_observability_lists_the_texts_of_the_four_warnings_the_rewrite_gives() -> None:
    settings = Settings()
    path = settings.socket_mount_path
    proxy = {
        "name": settings.proxy_container,
        "volumeMounts": [
            {"name": "other", "mountPath": path},
            {"name": "another", "mountPath": path},
        ],
    }
    app = {"name": "app", "volumeMounts": [{"name": settings.certs_volume, "mountPath": "/c"}]}
    pod = {
        "spec": {
            "containers": [app, proxy],
            "volumes": [
                {"name": settings.socket_volume, "hostPath": {"path": "/run/spire"}},
                {"name": settings.certs_volume, "emptyDir": {}},
                {"name": "other", "emptyDir": {}},
                {"name": "another", "emptyDir": {}},
            ],
        }
    }
    given = rewrite(pod, Contract.from_settings(settings)).warnings
    documented = documented_warnings()
    patterns = [
        re.compile(
            "".join(
                ".+" if p.startswith("<") else re.escape(p) for p in re.split(r"(<[a-z]+>)", text)
            )
            + "$"
        )
        for text in documented
    ]
    # Each warning given matches exactly one documented text, and each text one warning.
    matched = [[i for i, pattern in enumerate(patterns) if pattern.match(w)] for w in given]
    assert sorted(matched) == [[i] for i in range(len(documented))], (given, documented)
    assert len(documented) == 4


def test_slug_follows_githubs_anchors() -> None:
    assert slug("`failurePolicy: Fail`, and what to do when the webhook is down") == (
        "failurepolicy-fail-and-what-to-do-when-the-webhook-is-down"
    )
    assert slug("Why it exists: what was observed, and what Istio's code says") == (
        "why-it-exists-what-was-observed-and-what-istios-code-says"
    )
    assert slug("`make e2e`: a real API server") == "make-e2e-a-real-api-server"
