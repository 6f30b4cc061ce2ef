"""How the cluster commands (audit, doctor, verify) print a report: `-o table` for people
(each command brings its own table), `-o json` or `-o yaml` for programs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

FORMATS = ("table", "json", "yaml")
Decorated = TypeVar("Decorated", bound=Callable[..., Any])


def output_option(
    formats: Sequence[str] = FORMATS, show_default: bool = False
) -> Callable[[Decorated], Decorated]:
    """`-o/--output`, one of `formats`, table by default."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(list(formats)),
        default="table",
        show_default=show_default,
    )


def render(report: Any, output: str, table: Callable[[Any], str]) -> str:
    """`report` as `-o` asks: `table(report)`, or the JSON or YAML document."""
    if output == "table":
        return table(report)
    return dump(report, output)


def dump(data: Any, output: str) -> str:
    """`data` as the JSON or YAML document `-o json|yaml` prints."""
    if output == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(data, indent=2)
