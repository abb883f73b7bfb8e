"""The wire edge: dataclass <-> raft.proto conversion, and the raftRpc
service's refusal of messages that do not belong on a method."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft import raft_pb2
from raft.membership import Membership
from raft.transport import RAFT_SERVICE, RaftService
from raft.types import Entry, EntryType, Message, MessageType, SnapshotMeta
from raft.wire import RPC_METHOD, message_from_pb, message_to_pb, pack_entries, unpack_entries
from rpc import RpcChannel, RpcError, RpcProvider, Status

entries = st.lists(
    st.builds(Entry, index=st.integers(1, 2**40), term=st.integers(0, 2**40),
              data=st.binary(max_size=40), type=st.sampled_from(EntryType)),
    max_size=5,
).map(tuple)


@st.composite
def _memberships(draw: st.DrawFn) -> Membership:
    voters = draw(st.frozensets(st.integers(0, 50), max_size=7))
    learners = draw(st.frozensets(st.integers(51, 60), max_size=2))
    addresses = {n: f"10.0.0.{n}:{7000 + n}" for n in voters | learners if draw(st.booleans())}
    return Membership.of(voters, learners, addresses)


memberships = _memberships()

messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    src=st.integers(0, 100),
    dst=st.integers(0, 100),
    term=st.integers(0, 2**40),
    log_term=st.integers(0, 2**40),
    index=st.integers(0, 2**40),
    entries=entries,
    commit=st.integers(0, 2**40),
    reject=st.booleans(),
    reject_hint=st.integers(0, 2**40),
    reject_term=st.integers(0, 2**40),
    context=st.binary(max_size=16),
    snapshot=st.none() | st.builds(SnapshotMeta, index=st.integers(0, 2**40),
                                   term=st.integers(0, 2**40),
                                   membership=memberships),
    data=st.binary(max_size=64),
    offset=st.integers(0, 2**40),
    done=st.booleans(),
)


@given(messages)
def test_round_trip_is_exact(msg: Message) -> None:
    wire = message_to_pb(msg).SerializeToString()
    assert message_from_pb(raft_pb2.RaftMessage.FromString(wire)) == msg


def test_unknown_types_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown message type 99"):
        message_from_pb(raft_pb2.RaftMessage(type=99))
    good = pack_entries([Entry(index=1, term=1, data=b"abc")])
    bad_type = good[:16] + b"\x07" + good[17:]
    with pytest.raises(ValueError, match="unknown entry type 7"):
        message_from_pb(raft_pb2.RaftMessage(type=MessageType.APPEND, entries=bad_type))


def test_entries_of_the_older_encoding_are_refused_not_misread() -> None:
    old = raft_pb2.RaftMessage(type=MessageType.APPEND, src=1, dst=0, term=2)
    old.legacy_entries.add(index=1, term=1, type=0, data=b"x")
    with pytest.raises(ValueError, match="older version"):
        message_from_pb(raft_pb2.RaftMessage.FromString(old.SerializeToString()))


@pytest.mark.parametrize("cut", [1, 20, 22, 23, 30, 44])
def test_truncated_packed_entries_are_value_errors(cut: int) -> None:
    blob = pack_entries([Entry(index=1, term=1, data=b"abc"), Entry(index=2, term=1, data=b"")])
    assert unpack_entries(blob) == (Entry(index=1, term=1, data=b"abc"),
                                    Entry(index=2, term=1, data=b""))
    with pytest.raises(ValueError):
        unpack_entries(blob[:cut])


def test_every_request_type_has_a_method() -> None:
    requests = {MessageType.APPEND, MessageType.HEARTBEAT, MessageType.VOTE,
                MessageType.PRE_VOTE, MessageType.SNAPSHOT, MessageType.TIMEOUT_NOW}
    assert set(RPC_METHOD) == requests
    # StreamSnapshot carries file chunks, not messages (raft/snapshot_stream.py).
    assert set(RPC_METHOD.values()) | {"StreamSnapshot"} == {m.name for m in RAFT_SERVICE.methods}


def test_service_refuses_misrouted_or_foreign_messages() -> None:
    seen: list[Message] = []

    def handler(msg: Message) -> asyncio.Future[Message | None]:
        seen.append(msg)
        future: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
        future.set_result(Message(MessageType.VOTE_RESPONSE, src=0, dst=msg.src, term=msg.term))
        return future

    async def scenario() -> None:
        provider = RpcProvider("127.0.0.1", 0)
        provider.register(RAFT_SERVICE, RaftService(0, handler))
        await provider.start()
        try:
            async with RpcChannel("127.0.0.1", provider.port) as ch:
                async def call(method: str, msg: Message) -> raft_pb2.RaftReply:
                    return await ch.call(RAFT_SERVICE.full_name, method, message_to_pb(msg),
                                         raft_pb2.RaftReply, timeout=5)

                vote = Message(MessageType.VOTE, src=1, dst=0, term=3)
                reply = await call("RequestVote", vote)
                assert [m.type for m in reply.messages] == [MessageType.VOTE_RESPONSE]
                for method, msg in [("AppendEntries", vote),  # wrong method for the type
                                    ("RequestVote", Message(MessageType.VOTE, 1, 2, 3)),  # not us
                                    ("RequestVote", Message(MessageType.VOTE_RESPONSE, 1, 0))]:
                    with pytest.raises(RpcError) as info:
                        await call(method, msg)
                    assert info.value.status is Status.BAD_REQUEST
                bad = raft_pb2.RaftMessage(type=42, src=1, dst=0)
                with pytest.raises(RpcError) as info:
                    await ch.call(RAFT_SERVICE.full_name, "RequestVote", bad, raft_pb2.RaftReply,
                                  timeout=5)
                assert info.value.status is Status.BAD_REQUEST
        finally:
            await provider.close()
        assert seen == [vote]

    asyncio.run(asyncio.wait_for(scenario(), 20))
