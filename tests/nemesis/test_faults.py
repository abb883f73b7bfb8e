"""Short nemesis runs for ``make test`` (about a minute in total).

Each test runs a real 3-node cluster behind per-link proxies for ~10 s with
8 recorded clients while one family of faults is injected on a fixed seed,
then heals and checks: recovery, every acknowledged append present once,
linearizability, no node crash or traceback. A failure prints the run's
report (schedule with times, checker explanation, replay command); node
logs are in the test's tmp dir (``node<I>.log``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.linearizability.history import make_op
from tests.nemesis.scenario import RunResult, ScenarioConfig, run_scenario
from tests.nemesis.workload import WorkloadSpec, check_appends

pytestmark = pytest.mark.timeout(240)

DURATION = 10.0


def _run(tmp_path: Path, name: str, seed: int, faults: Sequence[str], *, fuzz: bool = False,
         spec: WorkloadSpec | None = None, max_raft_state: int | None = None) -> RunResult:
    config = ScenarioConfig(
        seed=seed, duration=DURATION, faults=faults, name=name, fuzz=fuzz,
        workload=spec or WorkloadSpec(), hold=(1.0, 2.5), quiet=(0.5, 1.5),
        max_raft_state=max_raft_state,
    )
    result = run_scenario(config, tmp_path / name)
    assert result.ok, result.report()
    assert result.operations["get_ok"] > 50 and result.operations["append_ok"] > 20, \
        result.report()
    return result


def test_kill_leader_and_restart(tmp_path: Path) -> None:
    r = _run(tmp_path, "kill-leader", 101, ["kill_leader", "kill_random"],
             max_raft_state=30_000)  # restarts also recover from snapshots
    assert r.faults["kill_leader"] + r.faults["kill_random"] >= 2, r.report()


def test_partitioned_leader_many_keys(tmp_path: Path) -> None:
    # Many keys (low contention), leader isolated / minority splits / one-way links.
    # A short clerk timeout: operations sent to the cut-off leader end unknown.
    spec = WorkloadSpec(clients=12, clerks=3, mixed_keys=30, append_keys=6, clerk_timeout=3.0)
    r = _run(tmp_path, "partition-leader", 202, ["isolate_leader", "partition", "one_way"],
             spec=spec)
    assert sum(r.faults.values()) >= 2, r.report()


def test_paused_leader_wakes_up_deposed(tmp_path: Path) -> None:
    r = _run(tmp_path, "pause-leader", 303, ["pause_leader"])
    assert r.faults["pause_leader"] >= 2, r.report()
    # The point of the scenario: another node was elected while it slept.
    assert any("new_leader" in s and "leads while" in s for s in r.schedule), r.report()


def test_crash_all_slow_links_with_fuzzing(tmp_path: Path) -> None:
    # High contention (2 keys + 1 append-only), bad input on every port meanwhile.
    spec = WorkloadSpec(clients=10, clerks=2, mixed_keys=2, append_keys=1)
    r = _run(tmp_path, "crash-all-fuzz", 404, ["crash_all", "slow", "reset_links"],
             fuzz=True, spec=spec)
    assert sum(r.faults.values()) >= 2, r.report()
    assert sum(v for k, v in r.fuzz.items() if k != "connect_failed") > 50, r.report()
    assert r.fuzz["huge_length_ffffffff"] > 0, r.report()


def test_check_appends_flags_lost_duplicate_and_phantom_appends() -> None:
    # The harness's own check must not be vacuous.
    inf = float("inf")
    history = [
        make_op(1, "append", "a0", "x1.1;", call=0.0, ret=1.0),
        make_op(1, "append", "a0", "x1.2;", call=1.0, ret=2.0),
        make_op(2, "append", "a0", "x2.1;", call=0.0, ret=inf),  # unknown outcome
        make_op(3, "append", "a1", "x3.1;", call=0.0, ret=1.0),
    ]
    assert check_appends(history, {"a0": "x1.1;x2.1;x1.2;", "a1": "x3.1;"}, ["a0", "a1"]) == []
    assert check_appends(history, {"a0": "x1.1;", "a1": "x3.1;"}, ["a0", "a1"]) == [
        "key 'a0': acknowledged append 'x1.2;' present 0 times in the final value (must be 1)"]
    dup = check_appends(history, {"a0": "x1.1;x1.2;x2.1;x2.1;", "a1": "x3.1;x3.1;"},
                        ["a0", "a1"])
    assert len(dup) == 2 and "'x2.1;' present 2 times" in dup[0] and "x3.1" in dup[1]
    phantom = check_appends(history, {"a0": "x1.1;x1.2;zz;", "a1": "x3.1;"}, ["a0", "a1"])
    assert phantom == ["key 'a0': token 'zz;' in the final value was never appended"]
