"""Imports run one way: the command line → the stages → the shared base and ``schemas/``.

The stages (collector, enricher, exporters) never import each other: they meet only through
Kafka and ``schemas/``. The shared base (``tetrapipe/`` apart from the command line, ``schemas/``,
``bpf/`` record layouts, the generated ``tetragon/`` protobuf modules) imports no stage. Read
from the source with ``ast``, function-level imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = {"collector", "enricher", "exporters"}
BASE = {"tetrapipe", "schemas", "bpf", "tetragon"}
COMMAND_LINE = {"tetrapipe/cli.py", "tetrapipe/__main__.py", "tetrapipe/startup_report.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _violations() -> list[str]:
    bad = []
    for package in sorted(STAGES | BASE):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in COMMAND_LINE:
                continue
            for top in _imports(path) & STAGES - {package}:  # the base may import only the base
                bad.append(f"{rel} imports {top}")
    return bad


def test_imports_run_one_way() -> None:
    assert _violations() == []


def test_the_check_sees_a_stage_importing_another(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from enricher import service\n    import exporters.sinks\n", encoding="utf-8")
    assert _imports(probe) == {"enricher", "exporters"}
