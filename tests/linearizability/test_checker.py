"""Tests of the linearizability checker and the history recorder."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.linearizability.checker import Outcome, check, check_key
from tests.linearizability.history import (
    HistoryRecorder,
    Operation,
    OpKind,
    history_from_json,
    history_to_json,
    make_op,
)

INF = math.inf


def get(c: int, out: str, call: float, ret: float, key: str = "k") -> Operation:
    return make_op(c, "get", key, None, out, call, ret)


def put(c: int, v: str, call: float, ret: float, key: str = "k") -> Operation:
    return make_op(c, "put", key, v, None, call, ret)


def app(c: int, v: str, call: float, ret: float, key: str = "k") -> Operation:
    return make_op(c, "append", key, v, None, call, ret)


def dele(c: int, call: float, ret: float, key: str = "k") -> Operation:
    return make_op(c, "delete", key, None, None, call, ret)


def assert_ok(history: Sequence[Operation]) -> None:
    result = check(history, timeout=10)
    assert result.ok, result.explanation


def assert_illegal(history: Sequence[Operation]) -> str:
    result = check(history, timeout=10)
    assert result.outcome is Outcome.ILLEGAL, result.explanation
    assert not result.ok
    return result.explanation


# --- hand-made linearizable histories ------------------------------------


def test_empty_history_is_ok() -> None:
    assert check([]).ok


def test_sequential_history() -> None:
    assert_ok(
        [
            get(0, "", 0, 1),
            put(0, "a", 2, 3),
            get(1, "a", 4, 5),
            app(1, "b", 6, 7),
            get(0, "ab", 8, 9),
            dele(0, 10, 11),
            get(1, "", 12, 13),
            app(1, "c", 14, 15),
            get(0, "c", 16, 17),
        ]
    )


@pytest.mark.parametrize("seen", ["x", "y"])
def test_overlapping_writes_reads_may_see_either(seen: str) -> None:
    other = "y" if seen == "x" else "x"
    assert_ok(
        [
            put(0, "x", 0, 10),
            put(1, "y", 1, 9),
            get(2, seen, 2, 3),
            get(3, other, 4, 5),  # the other write lands later, still in both intervals
            get(4, other, 11, 12),
        ]
    )


@pytest.mark.parametrize("final", ["ab", "ba"])
def test_concurrent_appends_any_order(final: str) -> None:
    assert_ok([app(0, "a", 0, 5), app(1, "b", 1, 4), get(2, final, 6, 7)])


def test_read_concurrent_with_append_sees_before_or_after() -> None:
    assert_ok([put(0, "x", 0, 1), app(1, "y", 2, 10), get(2, "x", 3, 4), get(3, "xy", 5, 6)])


def test_touching_intervals_count_as_concurrent() -> None:
    # put returns at t=1 exactly when the get is called: both orders allowed
    assert_ok([put(0, "a", 0, 1), get(1, "", 1, 2)])


def test_keys_are_independent() -> None:
    assert_ok(
        [
            put(0, "1", 0, 1, key="a"),
            put(1, "2", 0, 1, key="b"),
            get(2, "1", 2, 3, key="a"),
            get(3, "2", 2, 3, key="b"),
            get(4, "", 2, 3, key="c"),
        ]
    )


# --- hand-made non-linearizable histories ---------------------------------


def test_stale_read_after_completed_put() -> None:
    text = assert_illegal([put(0, "old", 0, 1), put(1, "new", 2, 3), get(2, "old", 4, 5)])
    assert "'k'" in text
    assert "get('k') -> 'old'" in text


def test_lost_append() -> None:
    assert_illegal(
        [app(0, "a", 0, 1), app(1, "b", 2, 3), app(0, "c", 4, 5), get(2, "ac", 6, 7)]
    )


def test_read_of_value_never_written() -> None:
    text = assert_illegal([put(0, "a", 0, 1), get(1, "zzz", 2, 3)])
    assert "zzz" in text


def test_read_of_value_written_only_after_the_read() -> None:
    assert_illegal([get(1, "late", 0, 1), put(0, "late", 2, 3)])


def test_reads_see_writes_in_contradicting_orders() -> None:
    assert_illegal(
        [
            put(0, "x", 0, 10),
            put(1, "y", 0, 10),
            get(2, "x", 11, 12),  # after both: x was last
            get(3, "y", 13, 14),  # ... and later y was last
        ]
    )


def test_concurrent_appends_observed_in_two_orders() -> None:
    assert_illegal([app(0, "a", 0, 5), app(1, "b", 0, 5), get(2, "ab", 6, 7), get(3, "ba", 8, 9)])


def test_delete_makes_key_missing() -> None:
    assert_illegal([put(0, "v", 0, 1), dele(0, 2, 3), get(1, "v", 4, 5)])


def test_failure_reported_for_the_right_key_with_window() -> None:
    history = [
        put(0, "1", 0, 1, key="good"),
        get(1, "1", 2, 3, key="good"),
        put(0, "a", 0, 1, key="bad"),
        put(1, "b", 1.5, 2.5, key="bad"),
        put(2, "c", 1.6, 2.4, key="bad"),
        get(3, "a", 3, 4, key="bad"),
    ]
    result = check(history)
    assert result.illegal and result.key == "bad"
    text = result.explanation
    assert "NOT LINEARIZABLE: key 'bad'" in text
    assert "Longest linearizable prefix" in text
    assert "client    3  get('bad') -> 'a'" in text
    assert "put('bad', 'b')" in text  # concurrent/pending writes listed
    assert "#5" in text  # index of the get in the whole history


# --- unknown outcomes -----------------------------------------------------


def test_unknown_put_may_explain_a_read() -> None:
    assert_ok([put(0, "a", 0, 1), put(1, "b", 2, INF), get(2, "b", 5, 6), get(2, "b", 7, 8)])


def test_unknown_put_may_not_have_happened() -> None:
    assert_ok([put(0, "a", 0, 1), put(1, "b", 2, INF), get(2, "a", 5, 6)])


def test_unknown_put_cannot_explain_a_read_before_its_call() -> None:
    assert_illegal([put(0, "a", 0, 1), get(2, "b", 2, 3), put(1, "b", 4, INF)])


def test_unknown_put_takes_effect_at_most_once_in_one_place() -> None:
    # once the unknown put is seen, it cannot "un-happen"
    assert_illegal(
        [put(0, "a", 0, 1), put(1, "b", 2, INF), get(2, "b", 3, 4), get(3, "a", 5, 6)]
    )


def test_unknown_append_applies_once() -> None:
    assert_ok([app(1, "x", 0, INF), get(2, "x", 1, 2), get(2, "x", 3, 4)])
    assert_illegal([app(1, "x", 0, INF), get(2, "x", 1, 2), get(2, "xx", 3, 4)])


def test_unknown_get_is_dropped() -> None:
    unknown_get = make_op(9, "get", "k", None, None, 0, INF)
    assert_ok([put(0, "a", 0, 1), unknown_get, get(1, "a", 2, 3)])


def test_check_key_rejects_several_keys() -> None:
    with pytest.raises(ValueError):
        check_key([put(0, "a", 0, 1, key="x"), put(0, "a", 0, 1, key="y")])


def test_make_op_validates() -> None:
    with pytest.raises(ValueError):
        make_op(0, "put", "k", None, None, 0, 1)
    with pytest.raises(ValueError):
        make_op(0, "get", "k", "v", None, 0, 1)
    with pytest.raises(ValueError):
        make_op(0, "get", "k", None, "x", 2, 1)
    with pytest.raises(ValueError):
        make_op(0, "frob", "k", None, None, 0, 1)


# --- generated histories --------------------------------------------------


@dataclasses.dataclass
class Generated:
    ops: list[Operation]
    point: list[float]  # each op's real linearization point


def generate(
    n: int,
    clients: int,
    seed: int,
    mix: tuple[float, float, float, float] = (5, 2, 3, 0.3),
    keys: int = 1,
    unknown: float = 0.0,
) -> Generated:
    """A real execution: each client runs operations one after another; each
    operation takes effect at a random instant inside its [call, return]
    interval; outputs come from applying them in the order of those instants.

    Values are unique tokens (``p<i>;``, ``a<i>;``). With ``unknown`` > 0 some
    writes are reported with an unknown outcome (they did happen), and a few
    unknown writes that never happened are added.
    """
    rng = random.Random(seed)
    raw: list[tuple[float, int, str, str, float, float]] = []
    for c in range(clients):
        t = rng.random()
        for _ in range(n // clients):
            call = t + rng.random() * 0.1
            point = call + rng.random()
            ret = point + rng.random()
            kind = rng.choices(["get", "put", "append", "delete"], mix)[0]
            raw.append((point, c, kind, f"k{rng.randrange(keys)}", call, ret))
            t = ret
    raw.sort()
    state: dict[str, str] = {}
    ops: list[Operation] = []
    points: list[float] = []
    for i, (point, c, kind, key, call, ret) in enumerate(raw):
        cur = state.get(key, "")
        lost = kind != "get" and rng.random() < unknown
        end = INF if lost else ret
        if kind == "get":
            ops.append(make_op(c, kind, key, None, cur, call, ret))
        elif kind == "put":
            state[key] = f"p{i};"
            ops.append(make_op(c, kind, key, f"p{i};", None, call, end))
        elif kind == "append":
            state[key] = cur + f"a{i};"
            ops.append(make_op(c, kind, key, f"a{i};", None, call, end))
        else:
            state[key] = ""
            ops.append(make_op(c, kind, key, None, None, call, end))
        points.append(point)
        if lost and rng.random() < 0.5:  # a timed-out write that never happened
            ops.append(make_op(c, "put", key, f"ghost{i};", None, call, INF))
            points.append(INF)
    return Generated(ops, points)


def stale_mutation(gen: Generated, rng: random.Random) -> list[Operation] | None:
    """Make one get return a value that was certainly overwritten before it was called.

    Finds puts P, Q and a get G on one key with P.ret < Q.call and
    Q.ret < G.call (so every linearization orders P < Q < G), and sets G's
    output to P's value. With unique tokens no state after Q equals P's value,
    so the mutated history cannot be linearizable.
    """
    ops = gen.ops
    gets = [i for i, op in enumerate(ops) if op.kind is OpKind.GET]
    rng.shuffle(gets)
    for g in gets:
        G = ops[g]
        puts = [
            op for op in ops if op.kind is OpKind.PUT and op.key == G.key and op.ret < G.call
        ]
        puts.sort(key=lambda op: op.ret)
        for q in reversed(puts):
            older = [p for p in puts if p.ret < q.call and p.value != G.output]
            if older:
                mutated = list(ops)
                mutated[g] = dataclasses.replace(G, output=rng.choice(older[-3:]).value)
                return mutated
    return None


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 8),
    keys=st.integers(1, 3),
    unknown=st.sampled_from([0.0, 0.05]),
)
def test_generated_real_executions_are_linearizable(
    seed: int, clients: int, keys: int, unknown: float
) -> None:
    gen = generate(300, clients, seed, keys=keys, unknown=unknown)
    # Generous: the search is exponential in overlapping unknown-outcome
    # writes and the machine may be busy; "unknown" would fail this test.
    result = check(gen.ops, timeout=60)
    assert result.ok, result.explanation


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(2, 6))
def test_generated_stale_read_mutations_are_caught(seed: int, clients: int) -> None:
    gen = generate(150, clients, seed, mix=(4, 3, 3, 0.2))
    mutated = stale_mutation(gen, random.Random(seed))
    if mutated is None:
        return
    result = check(mutated, timeout=10)
    assert result.illegal, result.explanation


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(1, 8))
def test_generated_never_written_mutations_are_caught(seed: int, clients: int) -> None:
    gen = generate(300, clients, seed)
    rng = random.Random(seed)
    gets = [i for i, op in enumerate(gen.ops) if op.kind is OpKind.GET]
    if not gets:
        return
    g = rng.choice(gets)
    mutated = list(gen.ops)
    mutated[g] = dataclasses.replace(mutated[g], output=f"never{seed};")
    result = check(mutated, timeout=10)
    assert result.illegal and f"never{seed};" in result.explanation


def test_timeout_reports_unknown_never_ok() -> None:
    # 30 concurrent clients with many writes: far too hard for 0.2 s
    gen = generate(3000, 30, 7, mix=(2, 4, 4, 0.3))
    result = check(gen.ops, timeout=0.2)
    assert result.unknown and not result.ok and not result.illegal
    assert "UNKNOWN" in result.explanation


def test_performance_5000_ops_one_key_10_clients() -> None:
    gen = generate(5000, 10, 12345)
    assert len(gen.ops) == 5000
    start = time.monotonic()
    result = check(gen.ops, timeout=60)
    elapsed = time.monotonic() - start
    print(f"\n5000 ops, 1 key, 10 clients: {elapsed:.2f}s, steps {result.per_key_steps}")
    assert result.ok, result.explanation
    assert elapsed < 20


def test_performance_many_keys() -> None:
    gen = generate(20000, 20, 99, keys=50)
    start = time.monotonic()
    result = check(gen.ops, timeout=60)
    elapsed = time.monotonic() - start
    print(f"\n20000 ops, 50 keys, 20 clients: {elapsed:.2f}s")
    assert result.ok, result.explanation
    assert elapsed < 20


# --- recorder -------------------------------------------------------------


def test_recorder_records_calls_returns_and_unknowns() -> None:
    clock = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).__next__
    rec = HistoryRecorder(clock=clock)
    h1 = rec.call(0, "put", "k", "v")  # t=1
    h2 = rec.call(1, "get", "k")  # t=2
    rec.ok(h1)  # t=3
    rec.ok(h2, "v")  # t=4
    h3 = rec.call(2, "append", "k", "w")  # t=5
    rec.fail_unknown(h3)
    hist = rec.history()
    assert [op.kind for op in hist] == [OpKind.PUT, OpKind.GET, OpKind.APPEND]
    assert (hist[0].call, hist[0].ret) == (1.0, 3.0)
    assert (hist[1].output, hist[1].call, hist[1].ret) == ("v", 2.0, 4.0)
    assert hist[2].unknown and hist[2].ret == INF
    with pytest.raises(ValueError):
        rec.ok(h1)
    with pytest.raises(ValueError):
        rec.call(0, "get", "k", "x")


def test_recorder_in_flight_ops_are_unknown_and_discard_drops() -> None:
    rec = HistoryRecorder()
    rec.call(0, "put", "k", "v")
    h = rec.call(1, "put", "k", "w")
    rec.discard(h)
    hist = rec.history()
    assert len(hist) == 1 and hist[0].unknown
    assert len(rec) == 2


def test_recorder_with_asyncio_clients() -> None:
    """Many asyncio 'clients' on a toy in-memory store: the recorded history checks ok."""

    async def main() -> list[Operation]:
        store: dict[str, str] = {}
        rec = HistoryRecorder()
        rng = random.Random(1)

        async def op(kind: str, key: str, value: str | None) -> str | None:
            await asyncio.sleep(rng.random() * 0.002)
            result: str | None = None
            if kind == "get":
                result = store.get(key, "")
            elif kind == "put":
                store[key] = value or ""
            elif kind == "append":
                store[key] = store.get(key, "") + (value or "")
            else:
                store.pop(key, None)
            await asyncio.sleep(rng.random() * 0.002)
            return result

        async def client(c: int) -> None:
            for i in range(30):
                kind = rng.choice(["get", "put", "append", "delete", "get"])
                value = f"{c}.{i};" if kind in ("put", "append") else None
                await rec.run(c, kind, "k", value, op(kind, "k", value))
            with pytest.raises(TimeoutError):
                await rec.run(c, "put", "k", "lost", asyncio.wait_for(asyncio.sleep(1), 0.001))

        await asyncio.gather(*(client(c) for c in range(8)))
        return rec.history()

    history = asyncio.run(main())
    assert len(history) == 8 * 31
    assert sum(op.unknown for op in history) == 8
    result = check(history, timeout=10)
    assert result.ok, result.explanation


def test_history_json_round_trip() -> None:
    gen = generate(50, 3, 5, unknown=0.1)
    assert history_from_json(history_to_json(gen.ops)) == gen.ops
