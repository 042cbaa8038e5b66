"""What every config key means: `python -m dist_llm.train --help` and the config reference in the docs.

The descriptions are the trailing comments of the fields in dist_llm/config.py (`max_lr: float = 3e-3  #
learning rate after warmup`), read from the source once. One source: a key added without a comment
has no description, and tests/test_config_help.py fails.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import tokenize
import typing
from typing import Any

from dist_llm import config

EXAMPLES = """\
examples:
  python -m dist_llm.train --train.max_steps=200 --run.dir=runs/demo       # the CPU demo, longer
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc_per_node=8 --max-restarts=2 \\
      -m dist_llm.train --config configs/gpt2-small.toml --run.dir=runs/gpt2 --resume auto
"""

USAGE = """\
usage: python -m dist_llm.train [--config FILE.toml] [--resume auto|PATH] [--SECTION.KEY=VALUE ...]

Pretrain a language model. Settings: the defaults below < the --config file (default configs/tiny.toml,
the CPU demo) < --section.key=value (or --section.key value) on the command line.

{examples}
The config reference (every key, with its type and default) is docs/training.md.

keys (--section.key=default  description):
"""


@functools.cache
def field_descriptions(section: type) -> dict[str, str]:
    """field name -> the comment at the end of its line in the section dataclass's source."""
    source = inspect.getsource(section)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    first_name_on_line: dict[int, str] = {}
    comments: dict[int, str] = {}
    for tok in tokens:
        row = tok.start[0]
        if tok.type == tokenize.NAME and row not in first_name_on_line:
            first_name_on_line[row] = tok.string
        elif tok.type == tokenize.COMMENT and row in first_name_on_line:  # a trailing comment
            comments[row] = tok.string.lstrip("#").strip()
    by_name = {first_name_on_line[row]: text for row, text in comments.items()}
    return {f.name: by_name[f.name] for f in dataclasses.fields(section) if f.name in by_name}


def _type_name(typ: Any) -> str:
    return "list[str]" if typing.get_origin(typ) is list else typ.__name__


def cli_text(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]" if value else "[]"
    return str(value) if value != "" else "''"


def config_reference() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default as typed on the command line, description) for every key, in order.

    A key without a description gets "" (the test of this module fails on it)."""
    rows = []
    defaults = config.RunConfig()
    for section_name, section in typing.get_type_hints(config.RunConfig).items():
        hints = typing.get_type_hints(section)
        descriptions = field_descriptions(section)
        for f in dataclasses.fields(section):
            default = getattr(getattr(defaults, section_name), f.name)
            rows.append((f"{section_name}.{f.name}", _type_name(hints[f.name]), cli_text(default),
                         descriptions.get(f.name, "")))
    return rows


def usage() -> str:
    rows = config_reference()
    settings = [f"--{key}={default}" for key, _, default, _ in rows]
    width = min(max(map(len, settings)), 34)
    lines, section = [], ""
    for setting, (key, _, _, description) in zip(settings, rows, strict=True):
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            lines.append(f" [{section}]")
        lines.append(f"  {setting.ljust(width)}  {description}")
    return USAGE.format(examples=EXAMPLES) + "\n".join(lines)
