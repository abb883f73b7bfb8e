"""A real ``kvserver`` refuses a data dir that lost durable state: exit 2 and
one line on stderr naming what is missing, never a start with less."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from clerk import Clerk
from kvserver.launcher import free_ports
from tests.e2e.harness import run_cli


def test_lost_newest_segment_exits_2_naming_it(tmp_path: Path) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(f"node0ip=127.0.0.1\nnode0port={free_ports(1)[0]}\n")
    data = tmp_path / "node0"
    cmd = ["-m", "kvserver.main", "--id", "0", "-f", str(conf), "--data-dir", str(data)]
    proc = subprocess.Popen([sys.executable, *cmd], stderr=subprocess.PIPE, text=True)
    try:
        with Clerk.from_config(conf, timeout=20.0) as ck:  # a 1-node cluster acks alone
            for i in range(20):
                ck.put(f"k{i}", f"v{i}")
        # A second node on the same dir: the message names the dir once.
        other = tmp_path / "other.conf"  # another port: the port is checked first
        other.write_text(f"node0ip=127.0.0.1\nnode0port={free_ports(1)[0]}\n")
        locked = run_cli("-m", "kvserver.main", "--id", "0", "-f", str(other),
                         "--data-dir", str(data))
        assert locked.returncode == 2, locked.stderr
        assert locked.stderr == (
            f"kvserver: error: data dir {data} is in use by another process (LOCK is held)\n"
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err

    newest = sorted((data / "wal").glob("*.wal"))[-1]
    newest.unlink()
    result = run_cli(*cmd)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kvserver: error: {newest} is missing: {data}/MANIFEST records it")
    assert "acknowledged writes" in lines[0] and "Traceback" not in result.stderr
