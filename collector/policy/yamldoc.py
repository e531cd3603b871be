"""Policy documents as plain Python with the line of every path, and typed getters that refuse
a wrong value with its path and line (``policy.yaml:14: spec.kprobes[2].call: required``)."""

from __future__ import annotations

from typing import Any

import yaml

from collector.policy.model import PolicyError


class Doc:
    """One YAML document as plain Python plus the line of every path in it."""

    def __init__(self, node: yaml.Node, source: str) -> None:
        self.lines: dict[str, int] = {}
        self.source = source
        self._loader = yaml.SafeLoader("")
        try:
            self.value = self._convert(node, "")
        finally:
            self._loader.dispose()

    def _convert(self, node: yaml.Node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        placeholder = template_placeholder(node)
        if placeholder:
            raise PolicyError(path, f"a template placeholder {placeholder} where a value is expected: "
                                    "fill it in before loading", node.start_mark.line + 1, self.source)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in node.value:
                key = str(k.value)
                sub = f"{path}.{key}" if path else key
                self.lines[sub] = k.start_mark.line + 1
                out[key] = self._convert(v, sub)
                self.lines[sub] = k.start_mark.line + 1  # the key's line, not the value's
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        return self._loader.construct_object(node, deep=True)


class Ctx:
    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.notices: list[str] = []

    def fail(self, path: str, reason: str) -> PolicyError:
        line = 0
        p = path
        while True:
            if p in self.doc.lines:
                line = self.doc.lines[p]
                break
            if not p:
                break
            cut = max(p.rfind("."), p.rfind("["))
            p = p[:cut] if cut > 0 else ""
        return PolicyError(path, reason, line, self.doc.source)

    # typed getters
    def mapping(self, v: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.fail(path, f"expected a mapping, got {kind(v)}")
        if allowed is not None:
            for k in v:
                if k not in allowed:
                    raise self.fail(f"{path}.{k}" if path else k, f"unknown field {k!r}")
        return v

    def seq(self, v: Any, path: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(path, f"expected a list, got {kind(v)}")
        return v

    def string(self, v: Any, path: str, required: bool = False) -> str:
        if v is None:
            if required:
                raise self.fail(path, "required")
            return ""
        if isinstance(v, bool | dict | list):
            raise self.fail(path, f"expected a string, got {kind(v)}")
        return str(v)

    def integer(self, v: Any, path: str, default: int | None = None) -> int:
        if v is None:
            if default is None:
                raise self.fail(path, "required")
            return default
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise self.fail(path, f"expected an integer, got {kind(v)}")
        try:
            return int(str(v), 0)
        except ValueError:
            raise self.fail(path, f"expected an integer, got {v!r}") from None

    def boolean(self, v: Any, path: str) -> bool:
        if v is None:
            return False
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise self.fail(path, f"expected true or false, got {v!r}")

    def choice(self, v: Any, path: str, allowed: Any, what: str) -> str:
        s = self.string(v, path, required=True)
        if s not in allowed:
            raise self.fail(path, f"unknown {what} \"{s}\" (one of {', '.join(sorted(allowed))})")
        return s


def template_placeholder(node: yaml.Node) -> str:
    """``{{.Pid}}`` (a Go text/template placeholder, as in Tetragon's test templates) read by YAML
    as a flow mapping whose only key is a flow mapping ``{.Pid: null}``: the placeholder's text,
    or "" for any other node."""
    if not (isinstance(node, yaml.MappingNode) and node.flow_style and len(node.value) == 1):
        return ""
    key, value = node.value[0]
    if not (isinstance(key, yaml.MappingNode) and key.flow_style and len(key.value) == 1
            and isinstance(value, yaml.ScalarNode) and value.value == ""):
        return ""
    inner, empty = key.value[0]
    if not (isinstance(inner, yaml.ScalarNode) and isinstance(empty, yaml.ScalarNode) and empty.value == ""):
        return ""
    return "{{" + str(inner.value) + "}}"


def kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number",
            float: "a number", str: "a string", type(None): "nothing"}.get(type(v), type(v).__name__)
