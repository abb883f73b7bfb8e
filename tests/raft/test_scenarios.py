"""Runs every data-driven scenario in ``tests/raft/testdata/*.txt`` (format
and commands: ``tests/raft/scenario.py``), and checks that the runner can
fail. Regenerate the expected output with ``SCENARIO_REWRITE=1`` or
``pytest --rewrite`` -- then read the diff: the files are the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from raft.types import Entry, EntryType, Message, MessageType
from tests.raft.scenario import (
    ScenarioError,
    format_message,
    parse,
    rewrite_requested,
    rewrite_text,
    run_file,
    run_text,
)

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))


def test_there_are_scenarios() -> None:
    assert {p.stem for p in FILES} >= {
        "election", "replication_backup", "snapshot_catchup", "read_index", "transfer"}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    rewrite = rewrite_requested() or bool(request.config.getoption("--rewrite", False))
    mismatches = run_file(path, rewrite=rewrite)
    if mismatches:
        shown = "\n\n".join(m.diff() for m in mismatches[:5])
        more = f"\n\n... and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
        pytest.fail(
            f"{len(mismatches)} block(s) of {path.name} differ from the expected output "
            f"(rerun with SCENARIO_REWRITE=1 to accept, then review the diff):\n\n{shown}{more}",
            pytrace=False,
        )


# -- the runner itself ----------------------------------------------------------

TINY = """\
# one node elects itself
add-nodes 1
----
nodes 1: election=10 (timeout drawn from [10, 20)) heartbeat=1 pre-vote=true check-quorum=true

campaign 1
----
{campaign}

stabilize
----
> 1 handling Ready (must sync)
  SoftState: role=CANDIDATE leader=none
  HardState: term=1 vote=1 commit=0
  Messages (after persist):
  1->1 VOTE_RESPONSE term=1 granted
  1 became LEADER at term 1
> 1 handling Ready (must sync)
  SoftState: role=LEADER leader=1
  Entries:
  1/1 NOOP
> 1 handling Ready
  HardState: term=1 vote=1 commit=1
  CommittedEntries:
  1/1 NOOP

raft-state
----
{state}
"""

RIGHT = TINY.format(
    campaign="1 became CANDIDATE at term 1",
    state="1: LEADER term=1 vote=1 leader=1 commit=1 applied=1 last=1/1",
)
WRONG = TINY.format(
    campaign="1 became CANDIDATE at term 1",
    state="1: FOLLOWER term=1 vote=1 leader=1 commit=1 applied=1 last=1/1",
)


def test_matching_expectation_passes() -> None:
    assert run_text(RIGHT, "tiny.txt") == []


def test_wrong_expectation_is_reported_with_file_line_and_diff() -> None:
    (mismatch,) = run_text(WRONG, "tiny.txt")
    assert mismatch.block.line == 27 and mismatch.block.command == "raft-state"
    diff = mismatch.diff()
    assert "tiny.txt:27 expected (raft-state)" in diff
    assert "-1: FOLLOWER term=1" in diff and "+1: LEADER term=1" in diff


def test_wrong_expectation_fails_a_file(tmp_path: Path) -> None:
    path = tmp_path / "wrong.txt"
    path.write_text(WRONG)
    assert len(run_file(path)) == 1


def test_rewrite_fixes_the_expectation_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "wrong.txt"
    path.write_text(WRONG)
    assert run_file(path, rewrite=True) == []
    assert path.read_text() == RIGHT
    assert run_file(path) == []
    # Expected blocks may also be missing or longer than the output.
    assert rewrite_text(RIGHT.replace("1 became CANDIDATE at term 1\n", "")) == RIGHT
    longer = RIGHT.replace("applied=1 last=1/1", "applied=1 last=1/1\nextra line")
    assert rewrite_text(longer) == RIGHT


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("add-nodes 1\nstatus 1\n", "tiny.txt:1: expected '----'"),
        ("add-nodes 1\n----\nok\n\nfly 1\n----\n", "tiny.txt:5: fly 1: unknown command"),
        ("campaign 1\n----\n", "add-nodes first"),
        ("add-nodes 2\n----\nok\n\ncampaign 7\n----\n", "no node 7"),
        ("add-nodes 2 warp=9\n----\n", "unknown option 'warp'"),
        ("add-nodes 2\n----\nok\n\npropose 1 a=b\n----\n", "unexpected key=value"),
    ],
)
def test_malformed_scenarios_are_errors(text: str, error: str) -> None:
    with pytest.raises(ScenarioError, match=error.replace("(", r"\(")):
        run_text(text, "tiny.txt")


def test_parse_keeps_positions() -> None:
    (a, b) = parse("# c\nadd-nodes 3 pre-vote=false\n----\nx\ny\n\nheal\n----\n")
    assert (a.line, a.args, a.kwargs, a.expected) == (2, ["3"], {"pre-vote": "false"}, ["x", "y"])
    assert (a.out_start, a.out_end) == (3, 5)
    assert (b.line, b.expected, b.out_start, b.out_end) == (7, [], 8, 8)


def test_message_format_shows_every_set_field() -> None:
    m = Message(MessageType.APPEND, 1, 2, 3, log_term=2, index=4, commit=4,
                entries=(Entry(5, 3, b"x"), Entry(6, 3, type=EntryType.NOOP)))
    assert format_message(m) == '1->2 APPEND term=3 log=2/4 commit=4 entries=[3/5 "x", 3/6 NOOP]'
    r = Message(MessageType.APPEND_RESPONSE, 2, 1, 3, index=4, reject=True, reject_hint=2,
                reject_term=1)
    assert format_message(r) == "2->1 APPEND_RESPONSE term=3 index=4 rejected hint=2 hint-term=1"
    # A field the type's line does not normally show is not hidden.
    odd = Message(MessageType.VOTE_RESPONSE, 2, 1, 3, commit=7)
    assert format_message(odd) == "2->1 VOTE_RESPONSE term=3 granted commit=7"


def test_restart_reports_the_messages_it_loses() -> None:
    text = (
        "add-nodes 3\n----\n\ncampaign 1\n----\n\nprocess-ready 1\n----\n\n"
        "restart 2\n----\n"
        "lost in flight: 1->2 PRE_VOTE term=1 log=0/0\n"
        "2: FOLLOWER term=0 vote=none leader=none commit=0 applied=0 last=0/0\n"
    )
    (first, second, third) = run_text(text)  # the first three blocks expect nothing
    assert [m.block.command for m in (first, second, third)] == [
        "add-nodes", "campaign", "process-ready"]
