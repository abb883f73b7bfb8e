"""KvStore micro benchmark: LmdbKvStore and MemoryKvStore at 1M keys.

    .venv/bin/python benchmarks/kv_store_bench.py [--keys N] [--store lmdb|memory|both] [--dir DIR]

Each store runs in its own child process (so the RSS figures are its own),
with ``--keys`` random 16-byte keys and 100-byte values:

* load: the keys put in batches of 10,000 (one transaction each), then a
  ``sync()`` (LMDB: one fdatasync of the file), timed apart;
* get: 100,000 gets of random present keys, each timed (p50/p99, in us;
  ``perf_counter_ns`` costs ~0.1 us of that);
* batch: 2,000 write batches of 64 puts of random new keys, each timed from
  ``write()`` to the commit (not fsynced, as in the node);
* scan: 2,000 scans of 100 pairs from random start keys;
* copy_to: one copy of the whole store to a new file (LMDB: compacting copy
  plus fsync; memory: encode plus write_atomic), its time and size;
* RSS: resident set after the load and at the end (LMDB: includes the
  mapped file pages the process touched, which are page cache, shared);
  ``size_bytes()`` and the data file's size on disk.

Run it on the disk you care about: ``--dir`` defaults to a temporary
directory under the current one (/tmp is often a tmpfs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvserver.kv_store import KvStore
from kvserver.lmdb_store import LmdbKvStore
from kvserver.memory_store import MemoryKvStore

KEY_BYTES = 16
VALUE_BYTES = 100


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def pct(samples_ns: list[int], q: float) -> float:
    """The q-quantile of ``samples_ns`` in microseconds."""
    ordered = sorted(samples_ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def run_one(kind: str, n: int, directory: Path) -> dict[str, float]:
    rng = random.Random(14)
    value = rng.randbytes(VALUE_BYTES)
    keys = [rng.randbytes(KEY_BYTES) for _ in range(n)]
    store: KvStore = (LmdbKvStore(str(directory / "kv")) if kind == "lmdb"
                      else MemoryKvStore())
    out: dict[str, float] = {"rss_start_mib": rss_mib()}

    t0 = time.perf_counter()
    for i in range(0, n, 10_000):
        with store.write() as b:
            for k in keys[i:i + 10_000]:
                b.put(k, value)
    out["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.sync()
    out["sync_s"] = time.perf_counter() - t0
    out["rss_loaded_mib"] = rss_mib()

    clock = time.perf_counter_ns
    samples = []
    for k in rng.sample(keys, 100_000):
        t = clock()
        store.get(k)
        samples.append(clock() - t)
    out["get_p50_us"], out["get_p99_us"] = pct(samples, 0.5), pct(samples, 0.99)

    samples = []
    for _ in range(2_000):
        batch = [rng.randbytes(KEY_BYTES) for _ in range(64)]
        t = clock()
        with store.write() as b:
            for k in batch:
                b.put(k, value)
        samples.append(clock() - t)
    out["batch64_p50_us"], out["batch64_p99_us"] = pct(samples, 0.5), pct(samples, 0.99)

    samples = []
    for _ in range(2_000):
        start = rng.randbytes(KEY_BYTES)
        t = clock()
        pairs, _more = store.scan(start, None, 100, 1 << 30)
        samples.append(clock() - t)
        assert len(pairs) == 100 or not _more
    out["scan100_p50_us"], out["scan100_p99_us"] = pct(samples, 0.5), pct(samples, 0.99)

    copy = directory / "copy.snap"
    t0 = time.perf_counter()
    out["copy_bytes"] = store.copy_to(str(copy))
    out["copy_s"] = time.perf_counter() - t0
    out["size_bytes"] = store.size_bytes()
    if isinstance(store, LmdbKvStore):
        st = os.stat(store.path)
        out["file_bytes"], out["file_disk_bytes"] = st.st_size, st.st_blocks * 512
    out["keys"] = store.key_count()
    out["rss_end_mib"] = rss_mib()
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.close()
    return out


def report(kind: str, n: int, r: dict[str, float]) -> None:
    mb = 1 << 20
    print(f"\n== {kind}: {n:,} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B ==")
    print(f"load (batches of 10,000)  {r['load_s']:8.2f} s   ({n / r['load_s']:,.0f} puts/s);"
          f" sync after {r['sync_s'] * 1000:.0f} ms")
    print(f"get                       p50 {r['get_p50_us']:7.2f} us   "
          f"p99 {r['get_p99_us']:7.2f} us")
    print(f"batch of 64 puts          p50 {r['batch64_p50_us']:7.0f} us   "
          f"p99 {r['batch64_p99_us']:7.0f} us")
    print(f"scan of 100 pairs         p50 {r['scan100_p50_us']:7.1f} us   "
          f"p99 {r['scan100_p99_us']:7.1f} us")
    print(f"copy_to                   {r['copy_s']:8.2f} s    {r['copy_bytes'] / mb:,.1f} MiB")
    line = f"size_bytes()              {r['size_bytes'] / mb:8.1f} MiB"
    if "file_bytes" in r:
        line += (f"   (kv.mdb {r['file_bytes'] / mb:,.1f} MiB,"
                 f" {r['file_disk_bytes'] / mb:,.1f} MiB on disk)")
    print(line)
    print(f"RSS                       start {r['rss_start_mib']:.0f} MiB, loaded"
          f" {r['rss_loaded_mib']:.0f} MiB, end {r['rss_end_mib']:.0f} MiB,"
          f" max {r['maxrss_mib']:.0f} MiB (includes the benchmark's own key list)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--store", choices=["lmdb", "memory", "both"], default="both")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: ./)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        print(json.dumps(run_one(args.store, args.keys, args.dir)))
        return
    kinds = ["lmdb", "memory"] if args.store == "both" else [args.store]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.2f}")
    for kind in kinds:
        root = Path(tempfile.mkdtemp(prefix="kv_store_bench.", dir=args.dir or Path.cwd()))
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--child", "--store", kind, "--keys",
                 str(args.keys), "--dir", str(root)],
                check=True, capture_output=True, text=True)
            report(kind, args.keys, json.loads(child.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
