"""The KV client: ``AsyncClerk`` (asyncio) and ``Clerk`` (blocking).

What a clerk does for the caller:

* finds the leader and remembers it; follows WRONG_LEADER hints; tries the
  next server when one is unreachable or has no idea who leads;
* numbers its writes (``client_id``, ``seq``) and retries a write with the
  *same* numbers after a timeout or a leader change, so the cluster applies
  it at most once, and tells the servers the lowest seq whose reply it has
  not seen (``ack_seq``) so they can forget older replies;
* gives up after ``timeout`` seconds for the whole operation with
  ``ClerkTimeout``; the write may or may not have happened then.

Many operations of one ``AsyncClerk`` may be in flight at once; all share one
connection per server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kvserver import kv_pb2
from kvserver.config import load_config
from rpc import RpcChannel, RpcError, Stub, parse_response

__all__ = ["AsyncClerk", "Clerk", "ClerkError", "ClerkTimeout"]

_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KvServer"]
_SERVICE_NAME = _SERVICE.full_name
_REPLY_TYPES: dict[str, Any] = {"Get": kv_pb2.GetReply, "PutAppend": kv_pb2.PutAppendReply}


class ClerkError(Exception):
    """Base of the clerk's errors."""


class ClerkTimeout(ClerkError, TimeoutError):
    """The operation did not complete within the clerk's timeout. A write may
    or may not have been applied."""


class AsyncClerk:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        *,
        timeout: float = 10.0,
        rpc_timeout: float = 1.0,
        client_id: int | None = None,
    ) -> None:
        if not servers:
            raise ValueError("AsyncClerk needs at least one server address")
        self.servers = [(h, int(p)) for h, p in servers]
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout
        self.client_id = client_id if client_id is not None else random.getrandbits(63) + 1
        self._channels = [RpcChannel(h, p, backoff_initial=0.02, backoff_max=0.5)
                          for h, p in self.servers]
        self._stubs: list[Any] = [Stub(ch, _SERVICE) for ch in self._channels]
        self._leader = 0
        self._next_seq = 1
        # Seqs whose reply we have not seen; a dict keeps insertion order and
        # seqs are inserted increasing, so the first key is the lowest.
        self._unacked: dict[int, None] = {}

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> AsyncClerk:
        """Servers from a cluster config file (raises ``ConfigError``)."""
        return cls(load_config(path).addresses, **kwargs)

    # -- the API -------------------------------------------------------------

    async def get(self, key: str, default: str = "") -> str:
        """The value of ``key``, linearizable; ``default`` when it is absent."""
        request = kv_pb2.GetRequest(key=key, client_id=self.client_id)
        reply = await self._until_done("Get", request)
        if reply.err == kv_pb2.NO_KEY:
            return default
        return str(reply.value)

    async def put(self, key: str, value: str) -> None:
        await self._write(kv_pb2.PUT, key, value)

    async def append(self, key: str, value: str) -> None:
        await self._write(kv_pb2.APPEND, key, value)

    async def delete(self, key: str) -> None:
        await self._write(kv_pb2.DELETE, key, "")

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels), return_exceptions=True)

    async def __aenter__(self) -> AsyncClerk:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- machinery -------------------------------------------------------------

    async def _write(self, op: int, key: str, value: str) -> None:
        seq = self._next_seq
        self._next_seq += 1
        self._unacked[seq] = None
        try:
            request = kv_pb2.PutAppendRequest(
                key=key, value=value, op=op, client_id=self.client_id, seq=seq  # type: ignore[arg-type]
            )
            await self._until_done("PutAppend", request, seq_request=True)
        finally:
            # Whatever happened, we will not retry this seq: the server may
            # forget it (a timed-out write stays "may have happened").
            self._unacked.pop(seq, None)

    async def _until_done(self, method: str, request: Any, seq_request: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        tried_in_round = 0
        last_problem = "no server answered"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ClerkTimeout(f"{method} timed out after {self.timeout:g} s ({last_problem})")
            if seq_request:
                request.ack_seq = next(iter(self._unacked), self._next_seq)
            server = self._leader
            rpc_timeout = min(self.rpc_timeout, remaining)
            try:
                # Connected: send now and await the reply's future (no
                # coroutine per call); otherwise the stub connects first.
                call = self._channels[server].start_call(
                    _SERVICE_NAME, method, request, timeout=rpc_timeout
                )
                if call is None:
                    reply = await getattr(self._stubs[server], method)(request, timeout=rpc_timeout)
                else:
                    reply = parse_response(_REPLY_TYPES[method], await call)
            except RpcError as exc:
                last_problem = f"server {server}: {exc}"
                self._leader = (server + 1) % len(self.servers)
            else:
                if reply.err in (kv_pb2.OK, kv_pb2.NO_KEY):
                    return reply
                last_problem = f"server {server}: {kv_pb2.ErrorCode.Name(reply.err)}"
                if reply.err == kv_pb2.WRONG_LEADER:
                    hint = reply.leader_hint
                    if 0 <= hint < len(self.servers) and hint != server:
                        self._leader = hint
                        continue  # a fresh hint is worth following at once
                    self._leader = (server + 1) % len(self.servers)
                elif reply.err == kv_pb2.SHUTTING_DOWN:
                    self._leader = (server + 1) % len(self.servers)
                # TIMEOUT: the same server may still be leader; retry it.
            tried_in_round += 1
            if tried_in_round >= len(self.servers):
                # A full round without success: likely an election. Pause
                # briefly instead of spinning.
                tried_in_round = 0
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))


class Clerk:
    """Blocking twin of ``AsyncClerk`` (runs it on a private event loop).

    Not thread-safe: use one Clerk per thread."""

    def __init__(self, servers: Sequence[tuple[str, int]], **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._async = AsyncClerk(servers, **kwargs)

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> Clerk:
        return cls(load_config(path).addresses, **kwargs)

    @property
    def client_id(self) -> int:
        return self._async.client_id

    def get(self, key: str, default: str = "") -> str:
        return self._runner.run(self._async.get(key, default))

    def put(self, key: str, value: str) -> None:
        self._runner.run(self._async.put(key, value))

    def append(self, key: str, value: str) -> None:
        self._runner.run(self._async.append(key, value))

    def delete(self, key: str) -> None:
        self._runner.run(self._async.delete(key))

    def close(self) -> None:
        try:
            self._runner.run(self._async.close())
        finally:
            self._runner.close()

    def __enter__(self) -> Clerk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
