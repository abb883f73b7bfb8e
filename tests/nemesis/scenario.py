"""One nemesis run end to end, its verdict, the chaos summary, and a replay CLI.

:func:`run_scenario` starts a :class:`~tests.nemesis.nemesis.ProxiedCluster`,
runs a recorded :class:`~tests.nemesis.workload.Workload` (and optionally the
:class:`~tests.nemesis.workload.Fuzzer`) for ``duration`` seconds while a
seeded :class:`~tests.nemesis.nemesis.Nemesis` injects faults, then heals
everything and checks:

* the cluster recovers: a leader within ``recover_timeout``, the clients'
  last operations finish, fresh-clerk reads of every key succeed (else *hang*);
* every acknowledged append is present exactly once (*lost/duplicate append*);
* the history is linearizable (*not linearizable*; the checker giving up is
  reported as *checker undecided*, also a failure);
* no node exited by itself, no traceback or CRITICAL line in a node log.

With ``membership`` ("once" or "cycle") a
:class:`~tests.nemesis.membership.MembershipScript` grows, shrinks and
replaces members meanwhile ("once": its whole plan, 3 -> 5 -> 3 voters
and a replacement, before the faults stop; "cycle": the plan repeated
until the faults stop), and at the end: ``member_list`` shows what the
script made, all voters, every member applied the same index, and no
current member is down (a removed node that stopped by itself is fine).

Every anomaly is a bug in the store. A run writes ``DIR/report.txt`` (config,
fault schedule with times, counts, anomalies) and ``DIR/history.json``.

Replay a run by seed (same fault kinds, holds and choices)::

    .venv/bin/python -m tests.nemesis.scenario --seed 17 --duration 60 \\
        --faults kill_leader,partition --dir /tmp/replay17
    .venv/bin/python -m tests.nemesis.scenario --seed 5 --duration 20 \\
        --faults kill_random,partition --membership once --max-raft-state 30000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.linearizability.checker import check
from tests.linearizability.history import history_to_json
from tests.nemesis.membership import MembershipOptions, MembershipScript, check_membership
from tests.nemesis.nemesis import FAULT_KINDS, Nemesis, NemesisOptions, ProxiedCluster
from tests.nemesis.workload import Fuzzer, Workload, WorkloadSpec, check_appends

__all__ = ["SESSION_RESULTS", "RunResult", "ScenarioConfig", "format_summary", "run_scenario"]


@dataclass(frozen=True)
class ScenarioConfig:
    seed: int
    duration: float
    faults: Sequence[str] = FAULT_KINDS
    nodes: int = 3
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    hold: tuple[float, float] = (1.0, 3.0)
    quiet: tuple[float, float] = (0.5, 2.0)
    fuzz: bool = False
    max_raft_state: int | None = None
    check_timeout: float = 60.0
    recover_timeout: float = 30.0
    name: str = ""
    membership: str = ""  # "", "once" or "cycle" (tests/nemesis/membership.py)

    def describe(self) -> str:
        return (f"{self.name or 'run'} seed={self.seed} duration={self.duration:g}s "
                f"nodes={self.nodes} faults={','.join(self.faults) or '-'} "
                f"fuzz={self.fuzz} max_raft_state={self.max_raft_state} "
                f"hold={self.hold} quiet={self.quiet} membership={self.membership or '-'} "
                f"workload={self.workload}")


@dataclass
class RunResult:
    config: ScenarioConfig
    directory: Path
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fuzz: Counter[str] = field(default_factory=Counter)
    membership: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    schedule: list[str] = field(default_factory=list)
    check_summary: str = ""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.anomalies

    @property
    def total_ops(self) -> int:
        return sum(self.operations.values())

    def replay(self) -> str:
        c = self.config
        args = (f"--seed {c.seed} --duration {c.duration:g} --nodes {c.nodes} "
                f"--faults {','.join(c.faults) or 'none'}")
        w = c.workload
        args += (f" --clients {w.clients} --clerks {w.clerks} --mixed-keys {w.mixed_keys}"
                 f" --append-keys {w.append_keys} --clerk-timeout {w.clerk_timeout:g}")
        if c.hold != (1.0, 3.0) or c.quiet != (0.5, 2.0):
            args += (f" --hold {c.hold[0]:g},{c.hold[1]:g}"
                     f" --quiet {c.quiet[0]:g},{c.quiet[1]:g}")
        if c.fuzz:
            args += " --fuzz"
        if c.max_raft_state:
            args += f" --max-raft-state {c.max_raft_state}"
        if c.membership:
            args += f" --membership {c.membership}"
        return f".venv/bin/python -m tests.nemesis.scenario {args}"

    def report(self) -> str:
        lines = [
            f"== {self.config.describe()}",
            f"directory: {self.directory}",
            f"replay: {self.replay()}",
            f"elapsed {self.elapsed:.1f}s; operations {self.total_ops}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.operations.items())),
            "faults: " + (", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "-"),
            "fuzz: " + (", ".join(f"{k}={v}" for k, v in sorted(self.fuzz.items())) or "-"),
            "membership: " + (", ".join(f"{k}={v}" for k, v in sorted(self.membership.items()))
                              or "-"),
            f"checker: {self.check_summary}",
            "schedule:",
            *(f"  {s}" for s in self.schedule),
            f"anomalies: {len(self.anomalies)}",
            *(f"  !! {a}" for a in self.anomalies),
        ]
        return "\n".join(lines)


def run_scenario(config: ScenarioConfig, directory: str | Path) -> RunResult:
    """Run one scenario in ``directory`` (node data, logs, report); never raises
    for a store anomaly (they are in the result), only for harness errors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = RunResult(config, directory)
    start = time.monotonic()
    extra = ["--max-raft-state", str(config.max_raft_state)] if config.max_raft_state else []
    cluster = ProxiedCluster(config.nodes, directory, extra)
    try:
        cluster.start()
        asyncio.run(_run(config, cluster, result))
    finally:
        cluster.close()
        result.anomalies += [f"node crash: {e}" for e in cluster.check_exits()]
        result.anomalies += [f"log: {p}" for p in cluster.log_problems()]
        result.elapsed = time.monotonic() - start
        (directory / "report.txt").write_text(result.report() + "\n")
    return result


async def _run(config: ScenarioConfig, cluster: ProxiedCluster, result: RunResult) -> None:
    leader = await cluster.wait_leader(config.recover_timeout)
    if leader is None:
        result.anomalies.append(f"hang: no leader within {config.recover_timeout}s of start")
        return
    workload = Workload(cluster.member_addresses(), config.workload, config.seed)
    nemesis = Nemesis(cluster, config.seed,
                      NemesisOptions(kinds=config.faults, hold=config.hold, quiet=config.quiet))
    fuzzer = Fuzzer(cluster.addresses, config.seed)  # grows with the nodes added
    script = MembershipScript(cluster, nemesis, config.seed, MembershipOptions(
        cycle=config.membership == "cycle")) if config.membership else None
    final: dict[str, str] | None = None
    stop_faults = asyncio.Event()
    stop_clients = asyncio.Event()
    clients = asyncio.create_task(workload.run(stop_clients))
    fuzzing = asyncio.create_task(fuzzer.run(stop_faults)) if config.fuzz else None
    faults = asyncio.create_task(nemesis.run(stop_faults)) if config.faults else None
    changes = asyncio.create_task(script.run(stop_faults)) if script is not None else None
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(clients), config.duration)
        if clients.done():
            clients.result()  # a harness error: raise it
        if changes is not None and config.membership == "once":
            # The whole plan runs under the faults (each step is bounded).
            await asyncio.wait_for(asyncio.shield(changes), 600.0)
        stop_faults.set()
        for task in (faults, fuzzing, changes):
            if task is not None:
                await asyncio.wait_for(task, 120.0)  # heals everything before returning
        nemesis.record("healed", "all nodes up, network healed; clients keep going")
        # A little healthy time with the clients still running, then stop them.
        if await cluster.wait_leader(config.recover_timeout) is None:
            result.anomalies.append(
                f"hang: no leader within {config.recover_timeout}s after healing")
        await asyncio.sleep(1.0)
        stop_clients.set()
        try:
            await asyncio.wait_for(clients, config.workload.clerk_timeout + 15.0)
        except TimeoutError:
            result.anomalies.append("hang: clients did not finish their last operation "
                                    f"within {config.workload.clerk_timeout + 15.0}s")
        nemesis.record("clients_stopped", "")
        try:
            final = await workload.final_reads(config.recover_timeout,
                                               cluster.member_addresses())
        except Exception as exc:  # ClerkTimeout: the healed cluster does not serve
            result.anomalies.append(f"hang: final reads failed after healing: {exc!r}")
        if script is not None:
            result.anomalies += script.anomalies
            result.anomalies += await check_membership(cluster, 15.0)
    finally:
        stop_faults.set()
        stop_clients.set()
        for task in (clients, faults, fuzzing, changes):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        result.faults.update(nemesis.counts)
        result.schedule = [str(e) for e in nemesis.events]
        result.operations.update(workload.counts)
        result.fuzz.update(fuzzer.counts)
        if script is not None:
            result.membership.update(script.counts)

    history = workload.history()
    (result.directory / "history.json").write_text(history_to_json(history))
    if final is not None:
        result.anomalies += [f"append: {p}" for p in
                             check_appends(history, final, workload.appendonly)]
    if config.fuzz and fuzzer.sent == 0:
        result.anomalies.append("harness: the fuzzer sent nothing")
    verdict = await asyncio.to_thread(check, history, config.check_timeout)
    result.check_summary = (f"{verdict.outcome.value}: {verdict.operations} ops, "
                            f"{verdict.keys} keys, {verdict.elapsed:.2f}s")
    if verdict.illegal:
        result.anomalies.append(f"not linearizable:\n{verdict.explanation}")
    elif verdict.unknown:
        result.anomalies.append(f"checker undecided (failure to decide, not a pass): "
                                f"{verdict.explanation}")
    dead = [i for i in sorted(cluster.members) if not cluster.alive(i)]
    if dead:
        result.anomalies.append(f"node crash: members {dead} not alive at the end")


# -- summary -------------------------------------------------------------------

# The chaos runs of this pytest session (printed by tests/nemesis/conftest.py).
SESSION_RESULTS: list[RunResult] = []

#: The membership events the chaos summary lists (the reports have all).
SUMMARY_MEMBERSHIP_EVENTS = frozenset({"member_add", "member_promote", "member_removed",
                                       "replace_kill", "member_failed", "promote_refused"})


def format_summary(results: Sequence[RunResult], title: str = "nemesis chaos") -> str:
    ops: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    fuzz: Counter[str] = Counter()
    membership: Counter[str] = Counter()
    for r in results:
        ops.update(r.operations)
        faults.update(r.faults)
        fuzz.update(r.fuzz)
        membership.update(r.membership)
    anomalies = sum(len(r.anomalies) for r in results)
    lines = [
        f"# {title}: {len(results)} runs, {sum(r.total_ops for r in results)} operations, "
        f"{sum(faults.values())} faults, {anomalies} anomalies",
        f"# written {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"{'seed':>8} {'dur':>5} {'nodes':>5} {'ops':>7} {'unknown':>7} {'faults':>6} "
        f"{'fuzz':>6} {'member':>9} {'anom':>4}  checker",
    ]
    for r in results:
        unknown = sum(v for k, v in r.operations.items() if k.endswith("_unknown"))
        lines.append(
            f"{r.config.seed:>8} {r.config.duration:>5g} {r.config.nodes:>5} "
            f"{r.total_ops:>7} {unknown:>7} {sum(r.faults.values()):>6} "
            f"{sum(r.fuzz.values()):>6} {_membership_cell(r):>9} {len(r.anomalies):>4}  "
            f"{r.check_summary}")
    lines += [
        "",
        "operations: " + ", ".join(f"{k}={v}" for k, v in sorted(ops.items())),
        "faults: " + ", ".join(f"{k}={v}" for k, v in sorted(faults.items())),
        "fuzz: " + (", ".join(f"{k}={v}" for k, v in sorted(fuzz.items())) or "-"),
        "membership: " + (", ".join(f"{k}={v}" for k, v in sorted(membership.items())) or "-"),
        f"anomalies: {anomalies}",
    ]
    events = [(r, e) for r in results for e in r.schedule
              if e.split()[1:2] and e.split()[1] in SUMMARY_MEMBERSHIP_EVENTS]
    if events:
        lines.append("membership events (member add/promote/remove per run; the "
                     "'member' column is adds/promotes/removes):")
        lines += [f"  seed {r.config.seed}: {e.strip()}" for r, e in events]
    for r in results:
        for a in r.anomalies:
            lines.append(f"  seed {r.config.seed}: {a.splitlines()[0]}")
            lines.append(f"    replay: {r.replay()}   (report: {r.directory}/report.txt)")
    return "\n".join(lines) + "\n"


def _membership_cell(r: RunResult) -> str:
    """``add/promote/remove`` counts of a run ("-" without membership changes)."""
    m = r.membership
    if not r.config.membership:
        return "-"
    return f"{m['member_add']}/{m['member_promote']}/{m['member_remove']}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.nemesis.scenario",
                                description="Run (or replay) one seeded nemesis scenario.")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--faults", default=",".join(FAULT_KINDS),
                   help=f"comma-separated, or 'none' (known: {','.join(FAULT_KINDS)})")
    p.add_argument("--fuzz", action="store_true")
    p.add_argument("--max-raft-state", type=int, default=None)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--clerks", type=int, default=2)
    p.add_argument("--mixed-keys", type=int, default=3)
    p.add_argument("--append-keys", type=int, default=2)
    p.add_argument("--clerk-timeout", type=float, default=10.0)
    p.add_argument("--hold", default="1,3", help="min,max seconds a fault lasts")
    p.add_argument("--quiet", default="0.5,2", help="min,max seconds between faults")
    p.add_argument("--membership", choices=("once", "cycle"), default=None,
                   help="change the membership meanwhile: 'once' grows 3->5->3 and replaces "
                        "a node, 'cycle' repeats that until the faults stop")
    p.add_argument("--dir", default=None, help="run directory (default: a new temp dir)")
    args = p.parse_args(argv)
    faults = [] if args.faults == "none" else args.faults.split(",")
    spec = WorkloadSpec(clients=args.clients, clerks=args.clerks, mixed_keys=args.mixed_keys,
                        append_keys=args.append_keys, clerk_timeout=args.clerk_timeout)
    hold = tuple(float(x) for x in args.hold.split(","))
    quiet = tuple(float(x) for x in args.quiet.split(","))
    if len(hold) != 2 or len(quiet) != 2:
        p.error("--hold and --quiet take two numbers: min,max")
    config = ScenarioConfig(args.seed, args.duration, faults, args.nodes, spec,
                            hold=(hold[0], hold[1]), quiet=(quiet[0], quiet[1]),
                            fuzz=args.fuzz, max_raft_state=args.max_raft_state,
                            name="replay", membership=args.membership or "")
    if args.dir is None:
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix=f"nemesis-{args.seed}-"))
    else:
        directory = Path(args.dir)
    result = run_scenario(config, directory)
    print(result.report())
    print(json.dumps({"ok": result.ok, "anomalies": len(result.anomalies)}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
