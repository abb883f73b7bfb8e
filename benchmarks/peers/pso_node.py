"""One PySyncObj node holding a ``ReplDict``, with a JSON-lines control port.

    python pso_node.py --self 127.0.0.1:P --partners 127.0.0.1:Q,127.0.0.1:R
                       --ctl-port C [--journal FILE] [--batch]

PySyncObj has no network client: applications call the replicated object's
methods inside a node process. So the load generator runs here, in the node
that compare.py finds to be the leader, exactly as PySyncObj's users run it:

* writes: ``d.set(key, value, callback=cb)`` -- the asynchronous form; the
  command is queued to SyncObj's own thread (autoTick) and ``cb(result, err)``
  runs in that thread once the entry is committed and applied. A load thread
  keeps at most ``clients`` writes outstanding (a semaphore released by the
  callback): a closed loop of ``clients`` concurrent clients;
* reads: ``d.get(key)`` -- PySyncObj reads the local copy of the dict (no
  quorum, not linearizable); timed the same way, in the load thread.

Control commands (one JSON object per line, one reply line):
    {"cmd": "status"}  -> {"self", "leader", "ready", "is_leader"}
    {"cmd": "run", "kind", "clients", "ops", "keyspace", "value_size", "time_limit"}
        -> {"lat": [seconds...], "elapsed", "errors", "first_error", "load_thread_cpu"}
"""

from __future__ import annotations

import argparse
import json
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import key_of, op_is_put


def run_load(d: ReplDict, req: dict[str, Any]) -> dict[str, Any]:
    kind, clients, ops = req["kind"], int(req["clients"]), int(req["ops"])
    keyspace, value = int(req["keyspace"]), "v" * int(req["value_size"])
    deadline = time.monotonic() + float(req["time_limit"])
    slots = threading.Semaphore(clients)
    lock = threading.Lock()
    lats: list[float] = []
    state = {"done": 0, "errors": 0, "first_error": ""}
    all_done = threading.Event()
    perf = time.perf_counter

    def finished(ok: bool, why: str = "") -> None:
        with lock:
            if not ok:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or why
            state["done"] += 1
            if state["done"] == ops:
                all_done.set()
        slots.release()

    def make_cb(t0: float):  # type: ignore[no-untyped-def]
        def cb(result: Any, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                lats.append(perf() - t0)
                finished(True)
            else:
                finished(False, f"FAIL_REASON {err}")
        return cb

    cpu0 = time.thread_time()
    start = perf()
    for i in range(ops):
        while not slots.acquire(timeout=0.5):
            if time.monotonic() > deadline:
                break
        if time.monotonic() > deadline:
            break
        key = key_of(i, keyspace)
        if op_is_put(kind, i):
            d.set(key, value, callback=make_cb(perf()))
        else:
            t0 = perf()
            d.get(key)
            lats.append(perf() - t0)
            finished(True)
    all_done.wait(timeout=max(0.0, deadline - time.monotonic()))
    elapsed = perf() - start
    with lock:
        errors, first = state["errors"], state["first_error"]
        if state["done"] < ops:
            first = first or f"time limit: {state['done']}/{ops} done"
    return {"lat": list(lats), "elapsed": elapsed, "errors": errors, "first_error": first,
            "load_thread_cpu": time.thread_time() - cpu0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", required=True)
    ap.add_argument("--ctl-port", type=int, required=True)
    ap.add_argument("--journal", default=None)
    ap.add_argument("--batch", action="store_true")
    args = ap.parse_args()

    conf = SyncObjConf(appendEntriesUseBatch=args.batch, journalFile=args.journal,
                       dynamicMembershipChange=False)
    d = ReplDict()
    obj = SyncObj(args.self_addr, [p for p in args.partners.split(",") if p],
                  conf=conf, consumers=[d])

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                req = json.loads(line)
                if req["cmd"] == "status":
                    leader = obj._getLeader()
                    reply = {"self": str(obj.selfNode), "leader": str(leader) if leader else None,
                             "ready": obj.isReady(),
                             "is_leader": leader is not None and str(leader) == str(obj.selfNode)}
                elif req["cmd"] == "run":
                    reply = run_load(d, req)
                else:
                    reply = {"error": "unknown cmd"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", args.ctl_port), Handler)
    server.daemon_threads = True
    print(f"pysyncobj node {args.self_addr} ctl {args.ctl_port} "
          f"journal={args.journal} batch={args.batch}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        obj.destroy()


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
