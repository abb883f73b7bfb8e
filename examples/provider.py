"""`provider`: serves the seed's FriendService until SIGINT or SIGTERM.

    provider [--host H] [--port P]      (default 127.0.0.1:8000; --port 0 picks one)

Prints one line on stdout once it is listening,
``provider: serving fixbug.FriendService on HOST:PORT``, which the demo and
tests read to learn the port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from examples import friend_pb2
from rpc import RpcProvider
from rpc.cli import EXIT_FAILED, EXIT_OK, Parser, fail, host_name, port_number
from rpc.loop import run

__all__ = ["FriendService", "main"]

PROG = "provider"
SERVICE = friend_pb2.DESCRIPTOR.services_by_name["FriendService"]


class FriendService:
    """The seed's example: everyone has the same three friends."""

    FRIENDS = (b"gao yang", b"liu hong", b"wang shuo")

    async def GetFriendsList(
        self, request: friend_pb2.GetFriendsListRequest
    ) -> friend_pb2.GetFriendsListResponse:
        logging.getLogger("examples.provider").info(
            "GetFriendsList(userid=%d)", request.userid
        )
        return friend_pb2.GetFriendsListResponse(
            result=friend_pb2.ResultCode(errcode=0, errmsg=b""),
            success=True,
            friends=self.FRIENDS,
        )


async def serve(host: str, port: int) -> None:
    provider = RpcProvider(host, port)
    provider.register(SERVICE, FriendService())
    await provider.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{PROG}: serving {SERVICE.full_name} on {host}:{provider.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await provider.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Serve the example FriendService.")
    parser.add_argument("--host", type=host_name, default="127.0.0.1",
                        help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (8000; 0: any)")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    try:
        run(serve(args.host, args.port))
    except OSError as exc:
        fail(PROG, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:  # a SIGINT before the handler was installed
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
