"""Side-by-side benchmark: this project's RPC vs grpc.aio, same echo service.

    python benchmarks/rpc_bench.py [--calls 50000] [--concurrency 64] [--latency-calls 3000]
                                   [--payload 64] [--impl ours,grpc] [--loops asyncio,uvloop]

For each event loop (asyncio, uvloop) and each implementation, a server runs
in its own subprocess and the client in another, pinned to different cores
when the machine has two or more (so neither side steals the other's CPU and
both stacks get the same budget: one core each; grpc's C-core threads share
the server's core). The client keeps `--concurrency` calls in flight until
`--calls` are done (calls/s), then makes `--latency-calls` sequential calls
(p50/p99 latency). Both use the same protobuf messages (benchmarks/bench.proto)
and a per-call timeout of 10 s. grpc needs no code generation: its server is
built with grpc.method_handlers_generic_handler.

Needs the `bench` extra (grpcio): `make bench` installs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_pb2  # noqa: E402
from rpc.loop import new_event_loop  # noqa: E402

SERVICE = bench_pb2.DESCRIPTOR.services_by_name["Bench"]
GRPC_METHOD = f"/{SERVICE.full_name}/Echo"
CALL_TIMEOUT = 10.0


class EchoService:
    async def Echo(self, request: bench_pb2.EchoRequest) -> bench_pb2.EchoReply:
        return bench_pb2.EchoReply(payload=request.payload)


# -- servers (run in a subprocess) ---------------------------------------------


async def serve_ours() -> None:
    from rpc import RpcProvider

    provider = RpcProvider("127.0.0.1", 0)
    provider.register(SERVICE, EchoService())
    await provider.start()
    await _announce_and_wait(provider.port)
    await provider.close()


async def serve_grpc() -> None:
    import grpc

    async def echo(request: bench_pb2.EchoRequest, context: Any) -> bench_pb2.EchoReply:
        return bench_pb2.EchoReply(payload=request.payload)

    handler = grpc.method_handlers_generic_handler(
        SERVICE.full_name,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=bench_pb2.EchoRequest.FromString,
                response_serializer=bench_pb2.EchoReply.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await _announce_and_wait(port)
    await server.stop(None)


async def _announce_and_wait(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(port, flush=True)
    await stop.wait()


# -- clients (run in a subprocess) ----------------------------------------------


async def client(impl: str, port: int, calls: int, concurrency: int, latency_calls: int,
                 payload: int) -> dict[str, Any]:
    request = bench_pb2.EchoRequest(payload=b"x" * payload)
    if impl == "ours":
        from rpc import RpcChannel, Stub

        channel = RpcChannel("127.0.0.1", port)
        method = Stub(channel, SERVICE).Echo

        async def close() -> None:
            await channel.close()
    else:
        import grpc

        gchannel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        method = gchannel.unary_unary(
            GRPC_METHOD,
            request_serializer=bench_pb2.EchoRequest.SerializeToString,
            response_deserializer=bench_pb2.EchoReply.FromString,
        )

        async def close() -> None:
            await gchannel.close()

    async def worker(n: int) -> None:
        for _ in range(n):
            reply = await method(request, timeout=CALL_TIMEOUT)
            assert len(reply.payload) == payload

    async def load(total: int) -> float:
        per, extra = divmod(total, concurrency)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(per + (i < extra)) for i in range(concurrency)))
        return time.perf_counter() - t0

    await load(min(2000, calls))  # warm up: connect, caches, JIT-free but allocators
    elapsed = await load(calls)
    latencies = []
    for _ in range(latency_calls):
        t0 = time.perf_counter()
        await method(request, timeout=CALL_TIMEOUT)
        latencies.append(time.perf_counter() - t0)
    await close()
    latencies.sort()
    return {
        "calls_per_s": calls / elapsed,
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
    }


# -- orchestration ----------------------------------------------------------------


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def _run_role(args: argparse.Namespace) -> int:
    use_uvloop = args.loop == "uvloop"
    loop = new_event_loop(use_uvloop)
    asyncio.set_event_loop(loop)
    try:
        if args.serve:
            if args.pin:
                _pin(1)
            loop.run_until_complete(serve_ours() if args.serve == "ours" else serve_grpc())
        else:
            if args.pin:
                _pin(0)
            result = loop.run_until_complete(
                client(args.client, args.port, args.calls, args.concurrency,
                       args.latency_calls, args.payload)
            )
            print(json.dumps(result), flush=True)
    finally:
        loop.close()
    return 0


def _start_server(impl: str, loop: str, pin: bool) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, __file__, "--serve", impl, "--loop", loop]
    if not pin:
        cmd.append("--no-pin")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(20.0)
    sel.close()
    line = proc.stdout.readline().strip() if ready else ""
    if not line.isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{impl} server on {loop} did not start")
    return proc, int(line)


def _measure(impl: str, loop: str, args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        server, port = _start_server(impl, loop, args.pin)
    except RuntimeError as exc:
        print(f"  {exc}", file=sys.stderr)
        return None
    try:
        cmd = [sys.executable, __file__, "--client", impl, "--loop", loop, "--port", str(port),
               "--calls", str(args.calls), "--concurrency", str(args.concurrency),
               "--latency-calls", str(args.latency_calls), "--payload", str(args.payload)]
        if not args.pin:
            cmd.append("--no-pin")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["?"]
            print(f"  {impl}/{loop} client failed: {tail[0]}", file=sys.stderr)
            return None
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-calls", type=int, default=3_000)
    parser.add_argument("--payload", type=int, default=64, help="echo payload bytes")
    parser.add_argument("--impl", default="ours,grpc")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin server and client to separate cores")
    parser.add_argument("--serve", choices=["ours", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["ours", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve or args.client:
        return _run_role(args)

    impls = [i for i in args.impl.split(",") if i]
    loops = [lp for lp in args.loops.split(",") if lp]
    print(f"echo, {args.payload}-byte payload: {args.calls} calls with {args.concurrency} "
          f"in flight, then {args.latency_calls} sequential calls; "
          f"{'pinned to separate cores' if args.pin else 'unpinned'}")
    print(f"{'loop':8} {'impl':6} {'calls/s':>10} {'p50 us':>8} {'p99 us':>8}")
    status = 0
    for loop in loops:
        results: dict[str, dict[str, Any]] = {}
        for impl in impls:
            r = _measure(impl, loop, args)
            if r is None:
                print(f"{loop:8} {impl:6} {'failed':>10}")
                continue
            results[impl] = r
            print(f"{loop:8} {impl:6} {r['calls_per_s']:10.0f} {r['p50_us']:8.0f} "
                  f"{r['p99_us']:8.0f}", flush=True)
        if "ours" in results and "grpc" in results:
            ratio = results["ours"]["calls_per_s"] / results["grpc"]["calls_per_s"]
            print(f"{loop:8} ratio  {ratio:9.2f}x  (ours / grpc.aio calls/s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
