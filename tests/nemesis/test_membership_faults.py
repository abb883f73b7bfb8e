"""A short membership nemesis run for ``make test`` (issue 15): while 8
recorded clients run and kill/partition faults are injected on a fixed
seed, the cluster grows from 3 to 5 voters (learner added at a new port,
``kvserver --join``, caught up by snapshot, promoted), shrinks back to 3
(one removal is the leader's: it hands over first), and a killed follower
is replaced by a new node on a new port. Then the usual checks
(tests/nemesis/scenario.py): recovery, every acknowledged append present
once, a linearizable history, no crash or traceback; plus the membership
is what the script made, all voters, every member at the same applied
index. A failure prints the report (schedule, replay command)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.nemesis.scenario import ScenarioConfig, run_scenario

pytestmark = pytest.mark.timeout(240)


def test_grow_shrink_and_replace_under_faults(tmp_path: Path) -> None:
    config = ScenarioConfig(
        seed=2, duration=8.0, faults=["kill_random", "kill_leader", "partition"],
        hold=(1.0, 2.0), quiet=(1.0, 2.0), max_raft_state=30_000, membership="once",
        name="membership-once",
    )
    r = run_scenario(config, tmp_path / "run")
    report = r.report()
    assert r.ok, report
    m = r.membership
    assert (m["grow"], m["shrink"], m["replace"]) == (2, 2, 1), report
    assert (m["member_add"], m["member_promote"], m["member_remove"]) == (3, 3, 3), report
    assert sum(r.faults.values()) >= 2, report
    assert r.operations["get_ok"] > 100 and r.operations["append_ok"] > 50, report
    events = "\n".join(r.schedule)
    # The seed's first shrink takes the leader: it must hand over first.
    assert re.search(r"member_remove +node \d+ \(the leader\)", events), report
    # The replacement joined past the compacted prefix: it was sent a snapshot.
    caught_up = re.findall(r"member_caught_up node \d+ applied \d+ \(target \d+\), "
                           r"snapshot index (\d+)", events)
    assert len(caught_up) == 3 and int(caught_up[-1]) > 0, report
