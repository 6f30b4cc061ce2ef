"""YAML for people to read: key order kept, multi-line strings (CEL, Go templates) as
literal blocks, no line folding. One definition for every rendered manifest."""

from __future__ import annotations

from typing import Any


def literal_block_yaml(documents: list[Any], *, explicit_start: bool = False) -> str:
    """`documents` as a YAML stream (`explicit_start`: each document opens with `---`)."""
    import yaml  # only the commands that render YAML pay for it

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    text: str = yaml.dump_all(
        documents,
        Dumper=Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
        explicit_start=explicit_start,
    )
    return text
