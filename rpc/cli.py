"""Command-line conventions shared by every console script of the project.

The rule: exit 0 on success, 1 when the operation failed, 2 on a usage or
config error, always with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Parser",
    "bounded_float",
    "fail",
    "host_name",
    "int_at_most",
    "is_host_name",
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


def is_host_name(text: str) -> bool:
    """Whether ``text`` can be handed to getaddrinfo: the resolver encodes
    names with IDNA, which raises (a UnicodeError, not an OSError) for a
    label over 63 characters, a name over 253 or a non-UTF-8 argument."""
    if "\x00" in text:
        return False
    try:
        text.encode("idna")
    except UnicodeError:
        return False
    return True


def host_name(text: str) -> str:
    """argparse type for a host name or IP address."""
    if not is_host_name(text):
        raise argparse.ArgumentTypeError(f"invalid host name {text!r}")
    return text


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    """argparse type for a finite number in (low, high] (timeouts: inf or
    1e300 seconds would overflow the loop's timers or wait forever)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if not low < value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is not in ({low:g}, {high:g}]")
        return value

    return parse


def int_at_most(high: int) -> Callable[[str], int]:
    """argparse type like ``positive_int`` with an upper bound (a count that
    sizes memory: clients, value bytes)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{value} is more than the maximum {high}")
        return value

    return parse


def positive_int(text: str) -> int:
    """argparse type for a count or size that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2,
               "mb": 1000**2, "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
               "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


def byte_size(text: str) -> int:
    """argparse type for a size in bytes, at least 1: a number with an
    optional unit, ``4096``, ``64MiB``, ``1.5GB`` (SI units are powers of
    1000, ``KiB``/``MiB``/``GiB``/``TiB`` of 1024, as etcd and Kubernetes
    read them)."""
    stripped = text.strip()
    number = stripped.rstrip("bBkKmMgGtTiI")
    unit = stripped[len(number):].strip().lower()
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, KeyError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r} (a number of bytes, or with a unit: 64MiB, 2GB)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 byte")
    return value


def fail(prog: str, message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    raise SystemExit(code)
