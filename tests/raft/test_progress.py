from __future__ import annotations

import pytest

from raft.progress import Inflights, Progress, ProgressState
from raft.types import Snapshot, SnapshotMeta


def test_inflights_bounded_by_count() -> None:
    inf = Inflights(3)
    for i in (1, 2, 3):
        assert not inf.full()
        inf.add(i, 10)
    assert inf.full()
    with pytest.raises(RuntimeError):
        inf.add(4, 1)
    inf.free_le(2)
    assert len(inf) == 1 and inf.bytes == 10 and not inf.full()


def test_inflights_bounded_by_bytes() -> None:
    inf = Inflights(100, max_bytes=100)
    inf.add(1, 60)
    assert not inf.full()
    inf.add(2, 60)
    assert inf.full()
    inf.free_le(1)
    assert not inf.full() and inf.bytes == 60


def test_inflights_indexes_must_increase() -> None:
    inf = Inflights(10)
    inf.add(5, 1)
    with pytest.raises(RuntimeError):
        inf.add(5, 1)


def test_probe_sends_one_at_a_time() -> None:
    pr = Progress(next_index=5, max_inflight=10, max_inflight_bytes=0)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(last_index=7, count=3, size=30)
    assert pr.is_paused() and pr.next == 5  # probe does not advance next
    assert pr.maybe_update(7)
    assert not pr.is_paused() and pr.match == 7 and pr.next == 8


def test_replicate_pipelines_until_inflights_full() -> None:
    pr = Progress(next_index=1, max_inflight=2, max_inflight_bytes=0)
    pr.become_replicate()
    pr.sent_entries(3, 3, 30)
    assert pr.next == 4 and not pr.is_paused()
    pr.sent_entries(5, 2, 20)
    assert pr.is_paused()
    pr.maybe_update(3)
    pr.inflights.free_le(3)
    assert not pr.is_paused()


def test_maybe_decr_to_in_probe_ignores_stale_rejections() -> None:
    pr = Progress(next_index=10, max_inflight=4, max_inflight_bytes=0)
    pr.sent_entries(9, 0, 0)
    assert not pr.maybe_decr_to(rejected=5, match_hint=3)  # not our last probe
    assert pr.maybe_decr_to(rejected=9, match_hint=3)
    assert pr.next == 4 and not pr.probe_sent


def test_maybe_decr_to_never_below_match() -> None:
    pr = Progress(next_index=10, max_inflight=4, max_inflight_bytes=0)
    pr.match = 6
    assert pr.maybe_decr_to(rejected=9, match_hint=0)
    assert pr.next == 7


def test_maybe_decr_to_in_replicate() -> None:
    pr = Progress(next_index=1, max_inflight=4, max_inflight_bytes=0)
    pr.maybe_update(5)
    pr.become_replicate()
    pr.sent_entries(20, 15, 100)
    assert not pr.maybe_decr_to(rejected=4, match_hint=0)  # <= match: stale
    assert pr.maybe_decr_to(rejected=12, match_hint=8)
    assert pr.next == 9


def test_snapshot_state_pauses_and_probe_resumes_after_it() -> None:
    pr = Progress(next_index=3, max_inflight=4, max_inflight_bytes=0)
    pr.become_snapshot(Snapshot(SnapshotMeta(index=50, term=2)))
    assert pr.is_paused() and pr.pending_snapshot == 50
    with pytest.raises(RuntimeError):
        pr.sent_entries(51, 1, 1)
    pr.become_probe()
    assert pr.state is ProgressState.PROBE and pr.next == 51


def test_maybe_update_reports_news_only() -> None:
    pr = Progress(next_index=1, max_inflight=4, max_inflight_bytes=0)
    assert pr.maybe_update(3)
    assert not pr.maybe_update(3)
    assert not pr.maybe_update(2)
    assert pr.match == 3 and pr.next == 4
