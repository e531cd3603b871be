"""Logging set-up shared by every service: one line per record on stderr."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "info", service: str = "tetrapipe") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
