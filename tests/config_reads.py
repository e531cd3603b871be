"""Which configuration keys a command reads, found statically: every ``<name>.<key>`` attribute
read (``cfg.kafka``, ``self.cfg.state_dir``) of a Config field, in the modules a command's entry
module imports, transitively, inside this repository (imports inside functions count too).
Used by tests/test_cli_options.py to compare each command's options with what it reads."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tetrapipe", "collector", "enricher", "exporters", "schemas", "bpf", "tetragon")
# derived properties of Config → the key they read
DERIVED = {"metrics_host_port": "metrics_address", "state_path": "state_dir"}
# modules that read every key generically (config itself, the supervisor handing all to children)
GENERIC = {"tetrapipe.config"}


def module_path(mod: str) -> Path | None:
    base = REPO.joinpath(*mod.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def _imports(mod: str, tree: ast.AST) -> set[str]:
    out: set[str] = set()
    pkg = mod if module_path(mod) and module_path(mod).name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in PACKAGES and module_path(m)}


@cache
def _parse(mod: str) -> ast.AST:
    path = module_path(mod)
    assert path is not None, mod
    return ast.parse(path.read_text(), str(path))


def closure(entries: list[str], skip: frozenset[str] = frozenset()) -> set[str]:
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        m = todo.pop()
        if m in seen or m in skip:
            continue
        seen.add(m)
        # a package's __init__ runs on import of any module below it
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if module_path(".".join(parts[:i])))
        todo.extend(_imports(m, _parse(m)) - seen)
    return seen


def reads(mod: str, fields: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(_parse(mod)):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in fields):
            found.add(node.args[1].value)  # getattr(cfg, "key", default)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            base = node.value
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if name in ("cfg", "config", "conf") or name.endswith("_cfg"):
                key = DERIVED.get(node.attr, node.attr)
                if key in fields:
                    found.add(key)
    return found


def keys_read(entries: list[str], fields: set[str], skip: frozenset[str] = frozenset()) -> set[str]:
    return set().union(*(reads(m, fields) for m in closure(entries, skip) - GENERIC))
