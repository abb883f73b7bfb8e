"""Side-by-side benchmark: this store vs PySyncObj vs etcd 3.4 (issue 7).

    make bench-compare                      # installs extras + etcd, runs this
    .venv/bin/python benchmarks/compare.py [--quick] [--systems a,b] [--out FILE]

Everything runs on 127.0.0.1 on this machine, 3 replicas each:

* ours      -- 3 ``kvserver`` processes (fsync on, the default) started by
               ``kvserver.launcher.Cluster`` in a temp dir; load from this
               process with ``AsyncClerk``: ``ours`` shares ONE clerk between
               all N concurrent coroutines (one connection to the leader,
               requests multiplexed, and those issued while others are in
               flight coalesced into ``Batch`` calls); ``ours-Nclerks`` gives
               every coroutine its own clerk (N connections, like N separate
               clients, nothing batched).
* pysyncobj -- 3 processes of benchmarks/peers/pso_node.py (a ``ReplDict``);
               PySyncObj has no network client, so the load runs inside the
               leader's process (see pso_node.py). Rows: in memory with
               batching off, journal file with batching off (and, opt-in with
               --systems, in memory with batching on).
* etcd      -- 3 ``etcd`` members (Debian's etcd 3.4, fsync on); load from
               this process over etcd's HTTP/JSON gateway with one keep-alive
               connection per concurrent client, to the leader; gets are
               linearizable ranges. Also ``etcdctl check perf --load=l``.

Workloads (same for every system): 16-byte keys, 100-byte values, keyspace
of 1000 keys preloaded before the timed runs; sequential puts (1 client),
puts with 16 and 128 concurrent clients, gets with 128, a 50/50 mix with 128.
Each is a closed loop with a fixed number of operations. Reported: ops/s,
p50/p99/p99.9 latency, CPU seconds of the server processes (utime+stime from
/proc/<pid>/stat, children included) and of the load generator.

The machine may have few cores: servers and load generator share them;
nothing is pinned. Results: a table on stdout, JSON in
benchmarks/results/compare-<date>.json, a plot in docs/bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import etcd as etcd_peer  # noqa: E402
from benchmarks.peers.common import (  # noqa: E402
    Procs,
    Workload,
    closed_loop,
    cpu_seconds,
    key_of,
    summarize,
)
from kvserver.launcher import Cluster, free_ports  # noqa: E402
from rpc.loop import loop_name, new_event_loop  # noqa: E402

KEYSPACE = 1000
VALUE_SIZE = 100
ALL_SYSTEMS = ["ours", "ours-Nclerks", "pysyncobj", "pysyncobj-journal",
               "pysyncobj-batch", "etcd"]
# pysyncobj-batch is opt-in (--systems): with appendEntriesUseBatch=True,
# PySyncObj sends entries only on its appendEntriesPeriod tick (100 ms), so a
# sequential client does ~10 puts/s and the row alone takes minutes.
DEFAULT_SYSTEMS = ["ours", "ours-Nclerks", "pysyncobj", "pysyncobj-journal", "etcd"]
QUICK_SYSTEMS = ["ours", "pysyncobj", "pysyncobj-journal", "etcd"]


def workloads(seq: int, put16: int, many: int) -> list[Workload]:
    return [
        Workload("put c=1", "put", 1, seq),
        Workload("put c=16", "put", 16, put16),
        Workload("put c=128", "put", 128, many),
        Workload("get c=128", "get", 128, many),
        Workload("mix c=128", "mix", 128, many),
    ]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def row(system: str, wl: Workload, summary: dict[str, Any], server_cpu: float,
        client_cpu: float, note: str = "") -> dict[str, Any]:
    ops = max(1, summary["ops"])
    return {
        "system": system, "workload": wl.name, "kind": wl.kind, "clients": wl.clients,
        "ops_requested": wl.ops, **summary,
        "server_cpu_s": round(server_cpu, 3), "client_cpu_s": round(client_cpu, 3),
        "server_cpu_us_per_op": round(server_cpu / ops * 1e6, 1), "note": note,
        "loadavg_1m_after": loadavg(),
    }


def loadavg() -> float:
    """1-minute load average: other work on the machine skews every number."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# -- ours ----------------------------------------------------------------------------

async def _ours_load(addresses: list[tuple[str, int]], wls: list[Workload], per_client: bool,
                     pids: list[int], system: str, time_limit: float) -> list[dict[str, Any]]:
    from clerk import AsyncClerk

    value = "v" * VALUE_SIZE
    n_clerks = max(w.clients for w in wls) if per_client else 1
    clerks = [AsyncClerk(addresses, timeout=10.0) for _ in range(n_clerks)]
    rows = []
    try:
        # Preload the keyspace (also finds the leader and warms up every clerk).
        deadline = time.monotonic() + 30
        while True:
            try:
                await clerks[0].put("warmup", "x")
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system}: cluster not ready: {exc}") from exc
                await asyncio.sleep(0.2)
        await asyncio.gather(*(ck.get("warmup") for ck in clerks))
        pre = Workload("preload", "put", 128, KEYSPACE)
        await closed_loop(pre, KEYSPACE, value,
                          lambda w, k, v: clerks[w % n_clerks].put(k, v),
                          lambda w, k: clerks[w % n_clerks].get(k), time_limit)
        for wl in wls:
            cpu0, pc0 = cpu_seconds(pids), time.process_time()
            res = await closed_loop(wl, KEYSPACE, value,
                                    lambda w, k, v: clerks[w % n_clerks].put(k, v),
                                    lambda w, k: clerks[w % n_clerks].get(k), time_limit)
            cpu1, pc1 = cpu_seconds(pids), time.process_time()
            s = summarize(res.latencies, res.elapsed, res.errors)
            rows.append(row(system, wl, s, cpu1 - cpu0, pc1 - pc0, res.first_error))
            log(f"{system:18} {wl.name:10} {s['ops_per_s']:>9,.0f} ops/s "
                f"p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms errors {s['errors']}")
    finally:
        await asyncio.gather(*(ck.close() for ck in clerks), return_exceptions=True)
    return rows


def run_ours(procs: Procs, tmp: Path, wls: list[Workload], per_client: bool,
             time_limit: float, profile_hook: Callable[..., Any] | None = None
             ) -> list[dict[str, Any]]:
    system = "ours-Nclerks" if per_client else "ours"
    work = tmp / system
    work.mkdir()
    cluster = Cluster(work / "cluster.conf", 3, work)
    try:
        cluster.start()
        for p in cluster.procs.values():
            procs.adopt(p)
        pids = [p.pid for p in cluster.procs.values()]
        log(f"{system}: 3 kvserver nodes {cluster.addresses} pids {pids}")
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_ours_load(cluster.addresses, wls, per_client, pids, system,
                                         time_limit))
    finally:
        cluster.stop()
        procs.stop(list(cluster.procs.values()))


# -- PySyncObj -------------------------------------------------------------------------

def _ctl(port: int, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("control connection closed")
            buf += chunk
    result: dict[str, Any] = json.loads(buf)
    return result


def run_pysyncobj(procs: Procs, tmp: Path, wls: list[Workload], system: str,
                  journal: bool, batch: bool, time_limit: float) -> list[dict[str, Any]]:
    work = tmp / system
    work.mkdir()
    ports = free_ports(6)
    raft_ports, ctl_ports = ports[:3], ports[3:]
    addrs = [f"127.0.0.1:{p}" for p in raft_ports]
    script = Path(__file__).resolve().parent / "peers" / "pso_node.py"
    nodes = []
    try:
        for i in range(3):
            argv = [sys.executable, str(script), "--self", addrs[i],
                    "--partners", ",".join(a for j, a in enumerate(addrs) if j != i),
                    "--ctl-port", str(ctl_ports[i])]
            if journal:
                argv += ["--journal", str(work / f"node{i}.journal")]
            if batch:
                argv += ["--batch"]
            nodes.append(procs.start(argv, str(work / f"node{i}.log")))
        pids = [p.pid for p in nodes]
        log(f"{system}: 3 PySyncObj nodes {addrs} pids {pids}")
        leader = -1
        deadline = time.monotonic() + 30
        while leader < 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: no leader within 30 s; see {work}")
            for i, p in enumerate(nodes):
                if p.poll() is not None:
                    raise RuntimeError(f"{system}: node {i} exited; see {work}/node{i}.log")
                try:
                    st = _ctl(ctl_ports[i], {"cmd": "status"}, 2.0)
                except OSError:
                    continue
                if st.get("is_leader") and st.get("ready"):
                    leader = i
                    break
            time.sleep(0.2)
        log(f"{system}: leader is node {leader}; load runs inside it")

        def run(wl: Workload) -> dict[str, Any]:
            return _ctl(ctl_ports[leader], {
                "cmd": "run", "kind": wl.kind, "clients": wl.clients, "ops": wl.ops,
                "keyspace": KEYSPACE, "value_size": VALUE_SIZE, "time_limit": time_limit,
            }, time_limit + 30)

        run(Workload("preload", "put", 128, KEYSPACE))
        rows = []
        for wl in wls:
            cpu0 = cpu_seconds(pids)
            res = run(wl)
            cpu1 = cpu_seconds(pids)
            s = summarize(res["lat"], res["elapsed"], res["errors"])
            load_cpu = res["load_thread_cpu"]
            rows.append(row(system, wl, s, cpu1 - cpu0 - load_cpu, load_cpu,
                            res["first_error"]))
            log(f"{system:18} {wl.name:10} {s['ops_per_s']:>9,.0f} ops/s "
                f"p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms errors {s['errors']}")
        return rows
    finally:
        procs.stop(nodes)


# -- etcd -------------------------------------------------------------------------------

async def _etcd_load(cluster: etcd_peer.EtcdCluster, wls: list[Workload],
                     time_limit: float) -> list[dict[str, Any]]:
    leader = await cluster.wait_leader()
    port = cluster.client_ports[leader]
    log(f"etcd: leader is member {leader} (client port {port})")
    value_b64 = etcd_peer.b64("v" * VALUE_SIZE)
    key_b64 = {key_of(i, KEYSPACE): etcd_peer.b64(key_of(i, KEYSPACE)) for i in range(KEYSPACE)}
    pool = [etcd_peer.HttpConn("127.0.0.1", port) for _ in range(max(w.clients for w in wls))]

    async def put(w: int, k: str, v: str) -> None:
        await pool[w].post("/v3/kv/put", {"key": key_b64[k], "value": value_b64})

    async def get(w: int, k: str) -> None:
        r = await pool[w].post("/v3/kv/range", {"key": key_b64[k]})
        if int(r.get("count", 0)) != 1:
            raise RuntimeError(f"range {k}: {r}")

    pids = cluster.pids()
    rows = []
    try:
        await closed_loop(Workload("preload", "put", 128, KEYSPACE), KEYSPACE, "", put, get,
                          time_limit)
        for wl in wls:
            cpu0, pc0 = cpu_seconds(pids), time.process_time()
            res = await closed_loop(wl, KEYSPACE, "", put, get, time_limit)
            cpu1, pc1 = cpu_seconds(pids), time.process_time()
            s = summarize(res.latencies, res.elapsed, res.errors)
            rows.append(row("etcd", wl, s, cpu1 - cpu0, pc1 - pc0, res.first_error))
            log(f"{'etcd':18} {wl.name:10} {s['ops_per_s']:>9,.0f} ops/s "
                f"p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms errors {s['errors']}")
    finally:
        for c in pool:
            c.close()
    return rows


def run_etcd(procs: Procs, tmp: Path, wls: list[Workload], time_limit: float,
             check_perf: str | None) -> tuple[list[dict[str, Any]], str]:
    if etcd_peer.EtcdCluster.available() is None:
        log("etcd: skipped: no etcd binary (make bench-compare installs Debian's etcd-server)")
        return [], "etcd not installed"
    work = tmp / "etcd"
    work.mkdir()
    ports = free_ports(6)
    cluster = etcd_peer.EtcdCluster(procs, work, ports[:3], ports[3:])
    try:
        cluster.start()
        log(f"etcd: 3 members, client ports {ports[:3]} pids {cluster.pids()}")
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            rows = runner.run(_etcd_load(cluster, wls, time_limit))
        perf = ""
        if check_perf:
            log(f"etcd: etcdctl check perf --load={check_perf} (about 60 s)")
            perf = etcd_peer.check_perf(cluster.client_urls(), check_perf)
            perf = summarize_check_perf(perf)
            for line in perf.splitlines():
                log(f"etcd check perf: {line}")
        return rows, perf
    finally:
        cluster.stop()


def summarize_check_perf(out: str) -> str:
    """The PASS/FAIL summary lines of ``etcdctl check perf`` (no progress bar)."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", out)]
    keep = [ln for ln in lines if ln.startswith(("PASS", "FAIL", "Error", "error"))
            or "timed out" in ln]
    return "\n".join(keep) if keep else out[-500:]


# -- output ----------------------------------------------------------------------------

def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'system':18} {'workload':10} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'p99.9 ms':>9} {'srv CPU s':>9} {'srv us/op':>9} {'load CPU s':>10} {'err':>4} "
            f"{'loadavg':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['system']:18} {r['workload']:10} {r['ops_per_s']:>9,.0f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['p999_ms']:>9.2f} {r['server_cpu_s']:>9.2f} "
              f"{r['server_cpu_us_per_op']:>9.0f} {r['client_cpu_s']:>10.2f} {r['errors']:>4} "
              f"{r['loadavg_1m_after']:>7.1f}")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot skipped: matplotlib not installed (pip install -e '.[compare]')")
        return False
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    for s in systems:
        pts = sorted((r["clients"], r["ops_per_s"]) for r in rows
                     if r["system"] == s and r["kind"] == "put")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 16, 128], ["1", "16", "128"])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("puts/s")
    ax.set_title("put throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    for ax, wname in ((axes[1], "put c=128"), (axes[2], "put c=1")):
        width = 0.27
        for j, (pkey, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"),
                                           ("p999_ms", "p99.9"))):
            vals = []
            for s in systems:
                m = [r[pkey] for r in rows if r["system"] == s and r["workload"] == wname]
                vals.append(m[0] if m else 0)
            ax.bar([i + (j - 1) * width for i in range(len(systems))], vals, width, label=label)
        ax.set_xticks(range(len(systems)), systems, rotation=25, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(f"latency percentiles, {wname}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small op counts (~1-2 minutes)")
    ap.add_argument("--systems", default=None,
                    help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}")
    ap.add_argument("--seq-ops", type=int, default=None, help="ops for put c=1 (2000)")
    ap.add_argument("--put16-ops", type=int, default=None, help="ops for put c=16 (15000)")
    ap.add_argument("--ops", type=int, default=None,
                    help="ops for each c=128 workload (30000)")
    ap.add_argument("--time-limit", type=float, default=120.0,
                    help="seconds allowed per workload before it is cut short (120)")
    ap.add_argument("--check-perf", default=None,
                    help="etcdctl check perf load (s/m/l/xl; default l, none with --quick); "
                         "'none' skips it")
    ap.add_argument("--out", default=None,
                    help="JSON output (benchmarks/results/compare-<date>.json)")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "bench.png"))
    ap.add_argument("--keep-tmp", action="store_true", help="keep the data dirs and logs")
    args = ap.parse_args(argv)

    seq, put16, many = (300, 2000, 4000) if args.quick else (2000, 15000, 30000)
    wls = workloads(args.seq_ops or seq, args.put16_ops or put16, args.ops or many)
    systems = (args.systems.split(",") if args.systems
               else (QUICK_SYSTEMS if args.quick else DEFAULT_SYSTEMS))
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {unknown}; choose from {ALL_SYSTEMS}")
    check_perf = args.check_perf or (None if args.quick else "l")
    if check_perf == "none":
        check_perf = None

    procs = Procs()

    def on_term(signum: int, frame: object) -> None:
        # Raised where the main thread is (a load task may then log "Task
        # exception was never retrieved" on exit: harmless). Not routed through
        # asyncio.Runner's SIGINT cancel, which Python 3.11's wait_for can swallow.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="kvcompare-", dir=os.environ.get("BENCH_TMP")))
    log(f"work dir {tmp}; {os.cpu_count()} CPUs; systems {systems}")
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    perf = ""
    started = time.monotonic()
    status = 0
    try:
        for system in systems:
            try:
                if system == "ours":
                    rows += run_ours(procs, tmp, wls, False, args.time_limit)
                elif system == "ours-Nclerks":
                    rows += run_ours(procs, tmp, wls, True, args.time_limit)
                elif system.startswith("pysyncobj"):
                    try:
                        import pysyncobj  # noqa: F401
                    except ImportError:
                        notes[system] = "pysyncobj not installed"
                        log(f"{system}: skipped: pysyncobj not installed "
                            "(pip install -e '.[compare]')")
                        continue
                    rows += run_pysyncobj(procs, tmp, wls, system,
                                          journal=system == "pysyncobj-journal",
                                          batch=system == "pysyncobj-batch",
                                          time_limit=args.time_limit)
                elif system == "etcd":
                    etcd_rows, perf = run_etcd(procs, tmp, wls, args.time_limit, check_perf)
                    rows += etcd_rows
                    if not etcd_rows:
                        notes["etcd"] = perf
            except (RuntimeError, OSError, ConnectionError, TimeoutError) as exc:
                notes[system] = f"failed: {exc}"
                log(f"{system}: FAILED: {exc}")
                status = 1
    except KeyboardInterrupt:
        log("interrupted: stopping everything started")
        status = 130
    finally:
        procs.stop()
        if not args.keep_tmp:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)

    total = time.monotonic() - started
    print()
    print_table(rows)
    if perf:
        print(f"\netcdctl check perf --load={check_perf}:\n{perf}")
    for k, v in notes.items():
        print(f"note: {k}: {v}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"compare-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "loop": _loop_kind(),
        "loadavg_1m_at_end": loadavg(),
        "quick": args.quick, "keyspace": KEYSPACE, "key_bytes": 16, "value_bytes": VALUE_SIZE,
        "workloads": [vars(w) for w in wls], "duration_s": round(total, 1),
        "etcd_check_perf": perf, "notes": notes,
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"\nresults: {out}  ({total:.0f} s)")
    if rows and plot(rows, Path(args.plot),
                     f"3 replicas on 127.0.0.1, {os.cpu_count()} CPUs shared by servers and "
                     f"load generator; 16 B keys, 100 B values ({meta['date']})"):
        print(f"plot: {args.plot}")
    return status


def _loop_kind() -> str:
    loop = new_event_loop()
    try:
        return loop_name(loop)
    finally:
        loop.close()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
