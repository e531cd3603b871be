"""Compiles and loads the kernel programs with bcc against the BTF-derived include tree.

Limits stated up front: bcc runs LLVM in this process (about 1.5 s and 160-190 MiB RSS per
compile on the build machine); programs use no global data (strings live in maps).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from collector import kernel_variants
from collector.kernel_headers import KernelTree, ensure_tracefs, prepare_bcc_environment

log = logging.getLogger("tetrapipe.collector")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


class LoadError(RuntimeError):
    pass


# -D values for fields that differ between kernel versions (collector/kernel_variants.py)
_variants: dict[str, str] = {}


def prepare(cache_dir: Path | None = None) -> KernelTree:
    """Make bcc usable here: tracefs mounted, kernel include tree built or reused, the
    version-dependent field variants of this kernel chosen."""
    tracefs = ensure_tracefs()
    tree = prepare_bcc_environment(cache_dir)
    _variants.clear()
    _variants.update(kernel_variants.defines(tree.path, tracefs))
    log.info("kernel variants: %s", " ".join(f"{k}={v}" for k, v in sorted(_variants.items())))
    return tree


def load_program(source_name: str, defines: dict[str, Any] | None = None, text: str | None = None) -> Any:
    """Compile and load ``bpf/<source_name>`` (or ``text``) with bcc; attaches its
    TRACEPOINT_PROBE / RAW_TRACEPOINT_PROBE functions automatically."""
    from bcc import BPF  # imported here: only the collector needs bcc

    src = text if text is not None else (BPF_DIR / source_name).read_text()
    cflags = [f"-I{BPF_DIR}", "-Wno-unused-function", "-Wno-macro-redefined"]
    for k, v in {**_variants, **(defines or {})}.items():
        cflags.append(f"-D{k}={v}")
    t0 = time.monotonic()
    try:
        bpf = BPF(text=src, cflags=cflags)
    except Exception as exc:
        raise LoadError(f"{source_name}: bcc could not compile or load it: {exc}") from exc
    log.info("loaded %s in %.2fs", source_name, time.monotonic() - t0)
    return bpf
