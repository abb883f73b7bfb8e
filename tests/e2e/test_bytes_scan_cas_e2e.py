"""Binary keys and values, scans and compare-and-set on real ``kvserver``
processes, through the clerks and ``callerMain`` (issue 14)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clerk import AsyncClerk, Clerk
from kvserver.limits import DEFAULT_SCAN_LIMIT
from tests.e2e.harness import run_cli, running_cluster, wait_leader

pytestmark = pytest.mark.timeout(180)

CALLER = ["-m", "clerk.caller_main"]
KEYS = 1500  # more than one server page (DEFAULT_SCAN_LIMIT pairs)


def test_bytes_scans_and_cas_on_a_real_cluster(tmp_path: Path) -> None:
    assert KEYS > DEFAULT_SCAN_LIMIT
    with running_cluster(tmp_path) as cluster:
        wait_leader(cluster)
        with Clerk(cluster.addresses, timeout=20.0) as ck:
            ck.put(b"bin\x00\xff", b"\xff\xfe\x00\x80")
            assert ck.get(b"bin\x00\xff") == b"\xff\xfe\x00\x80"
            ck.append(b"bin\x00\xff", b"\xc3")
            assert ck.get(b"bin\x00\xff") == b"\xff\xfe\x00\x80\xc3"

        async def load_and_race() -> list[list[bool]]:
            async with AsyncClerk(cluster.addresses, timeout=20.0) as a, \
                    AsyncClerk(cluster.addresses, timeout=20.0) as b:
                await asyncio.gather(*(a.put(b"p/%04d" % i, bytes([i % 256, 0xFF]))
                                       for i in range(KEYS)))
                rounds = []
                for r in range(20):
                    key = b"race/%d" % r
                    rounds.append(list(await asyncio.gather(
                        a.cas(key, None, b"a"), b.cas(key, None, b"b"))))
                    winner = b"a" if rounds[-1][0] else b"b"
                    assert await b.get(key) == winner
                return rounds

        for won in asyncio.run(load_and_race()):
            assert sorted(won) == [False, True], won  # exactly one of the two clerks

        with Clerk(cluster.addresses, timeout=20.0) as ck:
            everything = ck.scan_prefix("p/")  # two server pages
            assert everything == [(b"p/%04d" % i, bytes([i % 256, 0xFF])) for i in range(KEYS)]
            assert not everything.more
            head = ck.scan_prefix(b"p/", limit=1200)
            assert len(head) == 1200 and head.next_start == b"p/1200"
            tail = ck.scan(head.next_start, b"p0")
            assert head + tail == everything
            assert ck.cas(b"p/0000", b"\x00\xff", b"swapped") is True
            assert ck.cas(b"p/0000", b"\x00\xff", b"again") is False
            assert ck.get(b"p/0000") == b"swapped"


def test_caller_main_reads_and_writes_binary_keys_and_values(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        conf = str(cluster.config_path)
        wait_leader(cluster)

        def cli(*args: str) -> str:
            done = run_cli(*CALLER, "-f", conf, *args)
            assert done.returncode == 0, (args, done.stderr)
            return done.stdout

        assert cli("--hex", "put", "00ff", "ff0080") == ""
        assert cli("get", "--hex", "00ff") == "ff0080\n"
        assert cli("get", "\udcff") == "\n"  # b"\xff": absent so far
        # Without --hex an argument is the bytes the shell passed, UTF-8 or not
        # (Python hands undecodable bytes over as surrogates).
        cli("put", "\udcff", "caf\udce9")  # key b"\xff", value b"caf\xe9"
        assert cli("get", "--hex", "ff") == "636166e9\n"
        assert cli("get", "\udcff") == "caf\\xe9\n"  # not UTF-8: escaped
        assert cli("--hex", "get", "00ff") == "ff0080\n"
        assert cli("get", "--hex", "0000") == "\n"  # missing: an empty line
        cli("put", "s/a b", "x\ny\\z")
        cli("put", "s/é", "välue")
        cli("put", "t", "outside")
        # One line a pair, in key order; escapes keep each on its line and
        # a space in a key from splitting it.
        assert cli("scan", "s/") == "s/a\\x20b x\\ny\\\\z\ns/é välue\n"
        assert cli("scan", b"s/".hex(), "--hex") == "\n".join([
            b"s/a b".hex() + " " + b"x\ny\\z".hex(),
            "s/é".encode().hex() + " " + "välue".encode().hex(), ""])
        assert cli("scan", "s/", "--limit", "1") == "s/a\\x20b x\\ny\\\\z\n"
        lines = cli("scan", "").splitlines()
        assert lines[0] == "\\x00\\xff \\xff\\x00\\x80" and lines[-1] == "\\xff caf\\xe9"
        assert len(lines) == 5
        assert cli("--hex", "scan", "ff") == "ff 636166e9\n"
        assert cli("scan", "nothing") == ""
