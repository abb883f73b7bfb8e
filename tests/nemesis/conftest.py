"""Prints (and writes) the nemesis chaos summary at the end of a session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.nemesis.scenario import SESSION_RESULTS, format_summary

SUMMARY = Path(os.environ.get("NEMESIS_CHAOS_SUMMARY",
                              Path(__file__).with_name("chaos-summary.txt")))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SESSION_RESULTS:
        return
    text = format_summary(SESSION_RESULTS)
    SUMMARY.write_text(text)
    terminalreporter.write_sep("=", "nemesis chaos summary")
    terminalreporter.write(text)
    terminalreporter.write_line(f"(written to {SUMMARY})")
