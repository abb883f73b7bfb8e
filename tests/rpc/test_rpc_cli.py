"""The example programs as a user runs them: real processes, exit codes, stderr."""

from __future__ import annotations

import importlib
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

PY = sys.executable
TIMEOUT = 20


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=TIMEOUT)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def dead_port() -> int:
    # Bind and close: nothing listens there afterwards (for the next moment).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def provider() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([PY, "-m", "examples.provider", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(TIMEOUT), "provider did not start"
        sel.close()
        line = proc.stdout.readline()
        assert line.startswith("provider: serving fixbug.FriendService on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


def test_consumer_gets_friends_and_provider_stops_cleanly(
    provider: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = provider
    done = run("examples.consumer", "--port", str(port), "--userid", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "friends of user 7:", "  gao yang", "  liu hong", "  wang shuo"
    ]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_consumer_against_a_dead_port_exits_1_with_one_line() -> None:
    done = run("examples.consumer", "--port", str(dead_port()), "--timeout", "2")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("consumer: error: ") and "UNAVAILABLE" in line


@pytest.mark.parametrize(
    "args",
    [
        ["examples.consumer", "--port", "abc"],
        ["examples.consumer", "--port", "70000"],
        ["examples.consumer", "--userid", "-1"],
        ["examples.consumer", "--bogus"],
        ["examples.consumer", "--timeout", "0"],
        ["examples.provider", "--port", "99999"],
        ["examples.provider", "extra"],
    ],
)
def test_bad_usage_exits_2_with_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (argument parsing happens before any I/O) to keep the suite fast;
    # the subprocess test below checks the same through a real interpreter.
    module = importlib.import_module(args[0])
    with pytest.raises(SystemExit) as info:
        module.main(args[1:])
    assert info.value.code == 2
    assert "error" in one_line(capsys.readouterr().err)


def test_bad_usage_in_a_real_process() -> None:
    done = run("examples.consumer", "--port", "abc")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("consumer: error: argument --port")


def test_provider_on_a_busy_port_exits_1(provider: tuple[subprocess.Popen[str], int]) -> None:
    _, port = provider
    done = run("examples.provider", "--port", str(port))
    assert done.returncode == 1
    assert "cannot listen" in one_line(done.stderr)


def test_demo_runs_end_to_end() -> None:
    done = subprocess.run([PY, "-m", "examples.demo"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wang shuo" in done.stdout and "provider stopped (exit 0)" in done.stdout
