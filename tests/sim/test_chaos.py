"""``make chaos``: 20,000 full-length seeds across all fault profiles
(round-robin over ``PROFILES``, the membership-change ones included).

Two worker processes (``multiprocessing``), a wall-clock budget
(``SIM_CHAOS_SECONDS``, default 1800 s; seeds not started by then are
skipped and counted), a summary printed at the end. Seeds start at 1,000,000
so they do not repeat the ``make test`` ones. Tune with ``SIM_CHAOS_SEEDS``
and ``SIM_CHAOS_WORKERS``. Any violation fails the run and prints the first
reports, each with its replay command.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter

import pytest

from tests.sim.simulator import PROFILES, run_seed

SEEDS = int(os.environ.get("SIM_CHAOS_SEEDS", "20000"))
WORKERS = int(os.environ.get("SIM_CHAOS_WORKERS", "2"))
BUDGET = float(os.environ.get("SIM_CHAOS_SECONDS", "1800"))
BASE = 1_000_000


def _one(task: tuple[str, int, float]) -> tuple[str, int, str | None, str, dict[str, int]]:
    profile, seed, deadline = task
    if time.time() > deadline:
        return profile, seed, "skipped", "", {}
    r = run_seed(seed, profile)
    return profile, seed, r.invariant, r.report, dict(r.stats)


@pytest.mark.chaos
@pytest.mark.timeout(BUDGET + 300)
def test_chaos() -> None:
    names = sorted(PROFILES)
    deadline = time.time() + BUDGET
    tasks = [(names[k % len(names)], BASE + k, deadline) for k in range(SEEDS)]
    t0 = time.perf_counter()
    events: Counter[str] = Counter()
    by_profile: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    reports: list[str] = []
    skipped = 0
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(WORKERS) as pool:
        for profile, _seed, invariant, report, stats in pool.imap_unordered(_one, tasks, 16):
            if invariant == "skipped":
                skipped += 1
                continue
            by_profile[profile] += 1
            events.update(stats)
            if invariant is not None:
                violations[f"{invariant} ({profile})"] += 1
                if len(reports) < 5:
                    reports.append(report)
    dt = time.perf_counter() - t0
    ran = sum(by_profile.values())
    print(
        f"\nchaos: {ran} seeds in {dt:.0f}s ({ran / dt:.1f} seeds/s, {WORKERS} workers), "
        f"{skipped} skipped (budget {BUDGET:.0f}s)"
    )
    print(f"  per profile: {dict(sorted(by_profile.items()))}")
    print(f"  violations: {dict(violations) or 'none'}")
    keys: tuple[str, ...] = ("ticks", "delivered", "dropped", "duplicated", "crashes")
    keys += ("partitions", "elections")
    keys += ("applied", "reads_released", "snapshots_installed", "transfers")
    keys += ("deferred_writes", "pipelined_readys")
    keys += ("conf_add_learner", "conf_promote", "conf_remove", "conf_refused", "conf_error",
             "conf_not_leader", "joined", "retired", "outsiders_running")
    print("  events: " + ", ".join(f"{k}={events[k]}" for k in keys))
    for rep in reports:
        print(rep, end="\n\n")
    assert not violations, f"{sum(violations.values())} violation(s): {dict(violations)}"
