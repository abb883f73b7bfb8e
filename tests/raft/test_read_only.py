from __future__ import annotations

from raft.read_only import ReadOnly


def test_read_released_on_quorum_with_earlier_ones() -> None:
    ro = ReadOnly()
    voters = {1, 2, 3}
    assert ro.add_request(5, b"a", leader=1)
    assert ro.add_request(6, b"b", leader=1)
    assert not ro.add_request(6, b"b", leader=1)  # duplicate context
    assert ro.last_pending_context() == b"b"
    assert not ro.recv_ack(1, b"b", voters)
    assert ro.recv_ack(2, b"b", voters)
    released = ro.advance(b"b")
    assert [(r.index, r.context) for r in released] == [(5, b"a"), (6, b"b")]
    assert len(ro) == 0 and ro.last_pending_context() == b""


def test_unknown_ack_and_reset() -> None:
    ro = ReadOnly()
    assert not ro.recv_ack(2, b"x", {1, 2, 3})
    assert ro.advance(b"x") == []
    ro.add_request(1, b"x", 1)
    ro.reset()
    assert len(ro) == 0
