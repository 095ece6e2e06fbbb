"""Helpers shared by the examples: the --smoke switch (or FASTNN_SMOKE=1)."""

from __future__ import annotations

import argparse
import os


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--smoke",
        action="store_true",
        default=os.environ.get("FASTNN_SMOKE", "") not in ("", "0"),
        help="a shorter run for CI (also FASTNN_SMOKE=1)",
    )
    p.add_argument("--backend", default=None, help="numba, cython, numpy (default: automatic)")
    return p
