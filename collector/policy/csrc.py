"""Fixed C of generated policy programs, kept in bpf/policy_prog.c and pasted into each program.

bcc rewrites map calls (``m.lookup(&k)``) only in the main source, not in included headers, so
C that touches the program's maps cannot live in a header: it lives in ``bpf/policy_prog.c`` as
named fragments (``// @@ name`` starts one), read here and filled with ``string.Template``
(``${name}`` placeholders; C's own braces need no escaping).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from string import Template

SOURCE = Path(__file__).resolve().parent.parent.parent / "bpf" / "policy_prog.c"


@cache
def _fragments() -> dict[str, str]:
    text = SOURCE.read_text()
    parts = re.split(r"^// @@ (\w+)\n", text, flags=re.M)
    return {parts[i]: parts[i + 1].rstrip("\n") + "\n" for i in range(1, len(parts), 2)}


def fragment(name: str, **values: object) -> str:
    """The fragment ``name``; every ``${key}`` in it must be given."""
    return Template(_fragments()[name]).substitute({k: str(v) for k, v in values.items()})


def indent(text: str, n: int = 4) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())
