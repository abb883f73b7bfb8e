"""``make chaos``: long seeded nemesis runs with every fault kind mixed.

``NEMESIS_CHAOS_RUNS`` runs (default 10) of ``NEMESIS_CHAOS_SECONDS`` each
(default 60), seeds ``NEMESIS_CHAOS_SEED + k`` (default base 1000). Run k uses
5 nodes when ``k % 3 == 2`` (else 3), snapshots (``--max-raft-state``) on odd
k, the fuzzer on even k, and alternates high-contention and many-key
workloads and clerk timeouts (3 s or 10 s). A summary (operations, faults
per kind, anomalies with their replay commands) goes to stdout at the end of the session and to
``NEMESIS_CHAOS_SUMMARY`` (default ``tests/nemesis/chaos-summary.txt``,
git-ignored). Each run's directory (node logs, report.txt, history.json)
is under pytest's tmp dir and named in the summary.

Membership runs (issue 15): ``NEMESIS_CHAOS_MEMBERSHIP_RUNS`` more (default
3), seeds ``NEMESIS_CHAOS_SEED + 500 + k``, 3 nodes, every fault kind, the
membership script cycling grow 3->5 / shrink to 3 (sometimes the leader) /
replace a killed follower until the faults stop (tests/nemesis/membership.py),
snapshots, the fuzzer and the few-keys workload (10 s clerk timeout) on even
k, the many-keys workload (3 s) on odd k. The summary lists their
membership events.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.nemesis.scenario import SESSION_RESULTS, RunResult, ScenarioConfig, run_scenario
from tests.nemesis.workload import WorkloadSpec

RUNS = int(os.environ.get("NEMESIS_CHAOS_RUNS", "10"))
SECONDS = float(os.environ.get("NEMESIS_CHAOS_SECONDS", "60"))
BASE = int(os.environ.get("NEMESIS_CHAOS_SEED", "1000"))
MEMBERSHIP_RUNS = int(os.environ.get("NEMESIS_CHAOS_MEMBERSHIP_RUNS", "3"))


def config_for(k: int) -> ScenarioConfig:
    high_contention = k % 2 == 0
    # Short clerk timeouts on some runs: more unknown-outcome operations.
    timeout = 3.0 if k % 4 in (1, 2) else 10.0
    spec = (WorkloadSpec(clients=12, clerks=3, mixed_keys=3, append_keys=2,
                         clerk_timeout=timeout)
            if high_contention else
            WorkloadSpec(clients=16, clerks=4, mixed_keys=40, append_keys=8,
                         clerk_timeout=timeout))
    return ScenarioConfig(
        seed=BASE + k, duration=SECONDS, nodes=5 if k % 3 == 2 else 3, workload=spec,
        fuzz=k % 2 == 0, max_raft_state=50_000 if k % 2 == 1 else None,
        name=f"chaos-{k}", check_timeout=120.0,
    )


@pytest.mark.chaos
@pytest.mark.timeout(SECONDS + 400)
@pytest.mark.parametrize("k", range(RUNS))
def test_chaos_faults(k: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    _chaos_run(config_for(k), tmp_path_factory, "nemesis")


def _chaos_run(config: ScenarioConfig, tmp_path_factory: pytest.TempPathFactory,
               prefix: str) -> RunResult:
    directory: Path = tmp_path_factory.mktemp(f"{prefix}-seed{config.seed}")
    result = run_scenario(config, directory)
    SESSION_RESULTS.append(result)
    assert result.ok, result.report()
    return result


def membership_config_for(k: int) -> ScenarioConfig:
    config = config_for(k)
    # Membership changes add unknown-outcome operations (a removed leader's
    # clients time out): on the few-keys workload a 3 s clerk timeout made
    # the checker give up (seed 1502, 138 unknown on 3 keys); 10 s there.
    spec = replace(config.workload, clerk_timeout=10.0 if k % 2 == 0 else 3.0)
    return replace(config, seed=BASE + 500 + k, nodes=3, membership="cycle", workload=spec,
                   max_raft_state=30_000 if k % 2 == 0 else None,
                   name=f"chaos-membership-{k}")


@pytest.mark.chaos
@pytest.mark.timeout(SECONDS + 600)
@pytest.mark.parametrize("k", range(MEMBERSHIP_RUNS))
def test_chaos_membership(k: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = _chaos_run(membership_config_for(k), tmp_path_factory, "nemesis-membership")
    assert result.membership["member_promote"] >= 2, result.report()
