"""The compiled Avro writer (schemas/native/avro_write.c): the enricher's hot path, ~10× the
generated Python writer (schemas/compiled_writer.py) on an event.

``writer(parsed)`` turns a fastavro-parsed record schema into a program of nested tuples (see the
C file) and returns ``write(value) -> bytes``, or None when extensions are switched off
(``TETRAPIPE_NO_EXTENSIONS=1``, the switch the collector's ring-buffer helper obeys too), when
there is no C compiler or Python headers, or when the schema has a construct the Python writer
does not compile either. ``write`` raises ValueError for any value not of exactly the types the
schema asks for, with the same exact-type checks as the Python writer: codec.encode_body then
sends the value through the Python writer and fastavro, so the compiled path never decides what
is valid. Same bytes as the Python writer for every value both write (tests/test_codec_native.py).

Built by scripts/setup-native.sh (or at first use) with the system C compiler against the running
interpreter's headers into /var/cache/tetrapipe-build/native/, named by the source's and the
interpreter's hash; loaded only if owned by root (or us) and writable by nobody else. A service
run unprivileged (``run --user``, tests/test_least_privilege.py) may run another interpreter than
root's (the venv's python is a link into root's home it cannot reach) and cannot write that cache:
``build_for_user`` (setup-native.sh, for nobody) builds its module there beforehand.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.schema_gen import Unsupported
from tetrapipe import native_build

log = logging.getLogger("tetrapipe.avro")

SRC = Path(__file__).parent / "native" / "avro_write.c"
MODULE = "tetrapipe_avro_write"
NULL, BOOLEAN, INT, LONG, STRING, BYTES, OPTIONAL, ARRAY, MAP, RECORD = range(10)
_PRIMITIVES = {"null": NULL, "boolean": BOOLEAN, "int": INT, "long": LONG, "string": STRING, "bytes": BYTES}


def disabled() -> bool:
    return native_build.disabled()


def _so_name() -> str:
    h = hashlib.sha256(SRC.read_bytes() + sys.version.encode() + sysconfig.get_paths()["include"].encode())
    return f"avro_write-{h.hexdigest()[:16]}.so"


def build(quiet: bool = True) -> Path | None:
    """Compile the module into the first writable cache directory (idempotent); None if no
    compiler, no Python headers (the compile fails) or nothing writable."""
    include = sysconfig.get_paths()["include"]
    return native_build.build(SRC, _so_name(), "compiled Avro writer", [f"-I{include}"], quiet=quiet, timeout=120)


_PROBE = ("import sysconfig; from schemas import native_writer as n; "
          "print(n._so_name()); print(sysconfig.get_paths()['include'])")


def build_for_user(uid: int, gid: int, quiet: bool = True) -> Path | None:
    """As root: build the module for the interpreter ``sys.executable`` is for user ``uid`` (its
    name and headers asked of it, run as that user), into the root-owned cache that user reads and
    trusts; None if that user's interpreter cannot say or the build fails."""
    env = {k: v for k, v in os.environ.items() if k != "TETRAPIPE_NO_EXTENSIONS"}
    repo = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                            sys.executable, "-c", _PROBE], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
        name, include = r.stdout.split()
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("compiled Avro writer for uid %d not built: its interpreter did not say (%s)", uid, exc)
        return None
    return native_build.build(SRC, name, f"compiled Avro writer for uid {uid}", [f"-I{include}"],
                              quiet=quiet, timeout=120)


_module: Any = None
_tried = False


def module() -> Any:
    """The compiled module, or None (switched off, or not buildable: pure Python)."""
    global _module, _tried
    if disabled():
        return None
    if not _tried:
        _tried = True
        try:
            _module = _load()
        except (OSError, ImportError) as exc:   # never fatal: the Python writer does the same work
            log.warning("compiled Avro writer not loaded (%s): pure Python", exc)
    return _module


def _load() -> Any:
    path = build()
    if path is None:
        log.info("no compiled Avro writer (no compiler, no Python headers or nothing writable): pure Python")
        return None
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def program(parsed: dict[str, Any]) -> tuple[Any, ...]:
    """The C writer's program for a parsed record schema; raises Unsupported where
    compiled_writer does (unions other than ["null", T], logical types, enums, fixed ...)."""
    if parsed.get("type") != "record":
        raise Unsupported("top-level schema is not a record")
    named = dict(parsed.get("__named_schemas", {}))
    records: dict[str, tuple[Any, ...]] = {}

    def node(t: Any) -> tuple[Any, ...]:
        if isinstance(t, str) and t in named:
            t = named[t]
        if isinstance(t, list):
            if len(t) != 2 or t[0] != "null":
                raise Unsupported(f"union {t!r}")
            return (OPTIONAL, node(t[1]))
        if isinstance(t, dict):
            kind = t.get("type")
            if kind == "record":
                name = t["name"]
                if name not in records:  # a list, filled after: recursive references see it
                    fields: list[tuple[Any, ...]] = []
                    records[name] = (RECORD, fields)
                    fields.extend((sys.intern(f["name"]), "default" in f, f.get("default"), node(f["type"]))
                                  for f in t["fields"])
                return records[name]
            if kind == "array":
                return (ARRAY, node(t["items"]))
            if kind == "map":
                return (MAP, node(t["values"]))
            if isinstance(kind, str) and kind in _PRIMITIVES and t.get("logicalType") is None:
                return node(kind)
            raise Unsupported(f"schema type {kind!r}")
        if isinstance(t, str) and t in _PRIMITIVES:
            return (_PRIMITIVES[t],)
        raise Unsupported(f"schema type {t!r}")

    return node(parsed)


def writer(parsed: dict[str, Any]) -> Callable[[Any], bytes] | None:
    mod = module()
    if mod is None:
        return None
    try:
        prog = program(parsed)
    except Unsupported:
        return None
    write = mod.write

    def write_native(value: Any) -> bytes:
        return write(prog, value)
    return write_native
