"""A node whose storage fails at run time (disk full, file too large, no
descriptors) stops with one line on stderr and exit code 1: fail-stop, and
no traceback for what is the disk's doing, not a bug (issue 12)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clerk import Clerk, ClerkError
from kvserver.config import format_config
from kvserver.launcher import free_ports

pytestmark = pytest.mark.timeout(60)


def _small_files() -> None:
    # Writes past 256 KB fail with EFBIG, as a full disk fails with ENOSPC
    # (SIGXFSZ ignored, so the write returns the error instead of killing).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_a_storage_failure_stops_the_node_with_one_line(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    conf = tmp_path / "one.conf"
    conf.write_text(format_config([("127.0.0.1", port)]), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvserver.main", "--id", "0", "-f", str(conf),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=_small_files, text=True)
    try:
        with Clerk([("127.0.0.1", port)], timeout=3.0) as ck, pytest.raises(ClerkError):
            for i in range(200):  # 1 MB in all: the WAL passes the limit
                ck.put(f"k{i}", "v" * 5000)
        stderr = proc.communicate(timeout=20)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    # The WAL or the store's file is the first to pass the limit (LMDB
    # reports the failed write as an I/O error of its file).
    assert last.startswith("kvserver: error: node 0 stopped: ")
    assert "File too large" in last or "kv.mdb" in last, last
