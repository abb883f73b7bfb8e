"""Setup step of ``make bench-compare``: make etcd 3.4 available if possible.

Installs Debian's ``etcd-server`` and ``etcd-client`` (``apt-get update`` then
``apt-get install -y``) when ``etcd``/``etcdctl`` are missing and this is a
root Debian-like machine. Never fails the build: where etcd cannot be
installed it prints one line saying why and compare.py skips etcd.
PySyncObj and matplotlib come from pip (the ``compare`` extra).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    if shutil.which("etcd") and shutil.which("etcdctl"):
        print("peers setup: etcd already installed", flush=True)
        return 0
    if not shutil.which("apt-get"):
        print("peers setup: etcd skipped: no apt-get on this machine", flush=True)
        return 0
    if os.geteuid() != 0:
        print("peers setup: etcd skipped: apt-get install needs root", flush=True)
        return 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv, limit in ((["apt-get", "update", "-qq"], 300),
                        (["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"], 600)):
        try:
            out = subprocess.run(argv, env=env, capture_output=True, text=True,
                                 timeout=limit, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            print(f"peers setup: etcd skipped: '{' '.join(argv)}' timed out", flush=True)
            return 0
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            print(f"peers setup: etcd skipped: '{' '.join(argv)}' failed: {last}", flush=True)
            return 0
    ok = shutil.which("etcd") and shutil.which("etcdctl")
    print("peers setup: etcd installed" if ok else
          "peers setup: etcd skipped: installed packages provide no etcd binary", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
