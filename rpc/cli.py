"""Command-line conventions shared by every console script of the project.

The rule: exit 0 on success, 1 when the operation failed, 2 on a usage or
config error, always with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Parser",
    "fail",
    "port_number",
    "positive_int",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (argparse prints the whole usage)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def port_number(text: str) -> int:
    """argparse type for a TCP port (0 allowed: pick a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range 0..65535")
    return value


def positive_int(text: str) -> int:
    """argparse type for a count or size that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def fail(prog: str, message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    raise SystemExit(code)
