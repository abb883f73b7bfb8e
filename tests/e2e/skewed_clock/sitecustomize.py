"""Test-only: skew this process's wall clock on demand.

Put this directory on PYTHONPATH and set PYRAFTKV_TEST_CLOCK_DIR; from the
moment the file ``<dir>/node<I>`` exists (I: this kvserver's ``--id``), the
process's ``time.time()`` and ``time.time_ns()`` run ahead by the number of
seconds written in it (negative: behind). The monotonic clock is untouched,
as a real wall-clock step (NTP, an operator) leaves it.
"""

import os
import sys
import time

_DIR = os.environ.get("PYRAFTKV_TEST_CLOCK_DIR")

if _DIR:
    _real_time, _real_time_ns = time.time, time.time_ns

    def _skew() -> float:
        argv = sys.argv
        node = argv[argv.index("--id") + 1] if "--id" in argv[:-1] else "?"
        try:
            with open(os.path.join(_DIR, f"node{node}"), encoding="ascii") as f:
                return float(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def _time() -> float:
        return _real_time() + _skew()

    def _time_ns() -> int:
        return _real_time_ns() + int(_skew() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
