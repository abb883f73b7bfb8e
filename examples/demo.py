"""`make demo`: provider and consumer as real processes, end to end.

Starts `provider --port 0` as a subprocess, learns its port from its first
line of output, runs `consumer` against it, prints what both said, and stops
the provider with SIGTERM. Every wait is bounded; exits 0 only if all of it
worked.
"""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time

__all__ = ["main"]

STARTUP_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return ""
        return proc.stdout.readline().strip()
    finally:
        sel.close()


def main() -> int:
    py = sys.executable
    print("demo: starting provider on a free port")
    provider = subprocess.Popen(
        [py, "-m", "examples.provider", "--port", "0", "--log-level", "INFO"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(provider, STARTUP_TIMEOUT)
        if not line:
            print("demo: error: provider did not start", file=sys.stderr)
            return 1
        print(f"demo: {line}")
        port = line.rsplit(":", 1)[1]
        for userid in ("1000", "42"):
            cmd = [py, "-m", "examples.consumer", "--port", port, "--userid", userid]
            print(f"demo: $ consumer --port {port} --userid {userid}")
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=CALL_TIMEOUT)
            ms = (time.perf_counter() - t0) * 1000
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            print(f"demo: consumer exited {done.returncode} after {ms:.0f} ms (incl. startup)")
            if done.returncode != 0:
                return 1
        print("demo: consumer against a dead port (expect exit 1 and one line)")
        dead = subprocess.run(
            [py, "-m", "examples.consumer", "--port", "1", "--timeout", "2"],
            capture_output=True, text=True, timeout=CALL_TIMEOUT,
        )
        print(f"demo: exit {dead.returncode}: {dead.stderr.strip()}")
        if dead.returncode != 1:
            return 1
        return 0
    except subprocess.TimeoutExpired as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if provider.poll() is None:
            provider.send_signal(signal.SIGTERM)
            try:
                rc = provider.wait(STOP_TIMEOUT)
                print(f"demo: provider stopped (exit {rc})")
            except subprocess.TimeoutExpired:
                provider.kill()
                provider.wait()
                print("demo: provider did not stop on SIGTERM; killed", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
