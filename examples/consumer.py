"""`consumer`: calls FriendService.GetFriendsList once and prints the friends.

    consumer [--host H] [--port P] [--userid U] [--timeout S]

Exit 0 with the friends on stdout (one per line), 1 with one line on stderr
when the call fails (provider unreachable, timeout, error status), 2 on bad
usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from examples import friend_pb2
from rpc import RpcChannel, RpcError, Status, Stub
from rpc.cli import EXIT_OK, Parser, fail, host_name, port_number
from rpc.loop import run

__all__ = ["get_friends", "main"]

PROG = "consumer"
SERVICE = friend_pb2.DESCRIPTOR.services_by_name["FriendService"]


def _userid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(text)
    return value


async def get_friends(host: str, port: int, userid: int, timeout: float) -> list[str]:
    """One call over a fresh channel; raises RpcError on failure."""
    async with RpcChannel(host, port, connect_timeout=timeout) as channel:
        stub = Stub(channel, SERVICE)
        request = friend_pb2.GetFriendsListRequest(userid=userid)
        reply: friend_pb2.GetFriendsListResponse = await stub.GetFriendsList(
            request, timeout=timeout
        )
    if not reply.success or reply.result.errcode != 0:
        raise RpcError(
            Status.HANDLER_ERROR,  # the service itself reported a failure
            f"GetFriendsList failed: errcode {reply.result.errcode} "
            f"{reply.result.errmsg.decode(errors='replace')}",
        )
    return [name.decode(errors="replace") for name in reply.friends]


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Call FriendService.GetFriendsList once.")
    parser.add_argument("--host", type=host_name, default="127.0.0.1",
                        help="provider address (127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="provider port (8000)")
    parser.add_argument("--userid", type=_userid, default=1000, help="user id (1000)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (5)")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    try:
        friends = run(get_friends(args.host, args.port, args.userid, args.timeout))
    except RpcError as exc:
        where = f"{args.host}:{args.port}"
        fail(PROG, str(exc) if where in str(exc) else f"{where}: {exc}")
    except KeyboardInterrupt:
        fail(PROG, "interrupted")
    print(f"friends of user {args.userid}:")
    for name in friends:
        print(f"  {name}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
