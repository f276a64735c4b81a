"""
Tests for L{pyenvoy.filters.redis_proxy.cluster_scope}: how Envoy's
cluster-scope commands are planned and their shards' replies combined
(the strings are Envoy 1.40's, observed on its binary; the real-server
tests are in tests/test_redis_proxy.py, C{ClusterScopeTests}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.filters.redis_proxy.cluster_scope import (
    NEGATIVE, NOT_AN_ARRAY, NOT_AN_INTEGER, NOT_SAME, UNSUPPORTED, combineArrays, combineEach,
    combineIntegers, combineSame, plan)

ROLE = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"


class CombineTests(SynchronousTestCase):
    """
    The shards' replies as one.
    """

    def test_same(self) -> None:
        """
        Equal replies give that reply; different ones Envoy's error; an
        error reply, the first one, wins over both.
        """
        self.assertEqual(combineSame([b"+OK\r\n"] * 3), (b"+OK\r\n", True))
        self.assertEqual(combineSame([b":1\r\n", b":0\r\n"]), (NOT_SAME, False))
        self.assertEqual(combineSame([b"+OK\r\n", b"-ERR a\r\n", b"-ERR b\r\n"]),
                         (b"-ERR a\r\n", False))

    def test_arrays(self) -> None:
        """
        Arrays concatenated (empty ones too); anything else is an error.
        """
        self.assertEqual(
            combineArrays([b"*2\r\n$1\r\na\r\n$1\r\n1\r\n", b"*0\r\n",
                           b"*2\r\n$1\r\na\r\n$1\r\n2\r\n"]),
            (b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\na\r\n$1\r\n2\r\n", True))
        self.assertEqual(combineArrays([b"*0\r\n", b":3\r\n"]), (NOT_AN_ARRAY, False))
        self.assertEqual(combineArrays([b"*0\r\n", b"-upstream failure\r\n"]),
                         (b"-upstream failure\r\n", False))

    def test_integers(self) -> None:
        """
        Integers summed; a negative or a non-integer is Envoy's error.
        """
        self.assertEqual(combineIntegers([b":2\r\n", b":0\r\n", b":5\r\n"]), (b":7\r\n", True))
        self.assertEqual(combineIntegers([b":2\r\n", b":-1\r\n"]), (NEGATIVE, False))
        self.assertEqual(combineIntegers([b":2\r\n", b"+OK\r\n"]), (NOT_AN_INTEGER, False))

    def test_each(self) -> None:
        """
        ROLE: one element per shard.
        """
        self.assertEqual(combineEach([ROLE, ROLE]), (b"*2\r\n" + ROLE + ROLE, True))
        self.assertEqual(combineEach([ROLE, b"-no upstream host\r\n"]),
                         (b"-no upstream host\r\n", False))


class PlanTests(SynchronousTestCase):
    """
    Where each command goes, or the proxy's own answer.
    """

    def test_everyShard(self) -> None:
        """
        SCRIPT, ROLE, INFO and the supported SLOWLOG and CONFIG
        subcommands (any case) go to every shard with their combination.
        """
        cases = {
            (b"SCRIPT", b"LOAD", b"return 1"): combineSame,
            (b"ROLE",): combineEach,
            (b"slowlog", b"Get"): combineArrays,
            (b"SLOWLOG", b"LEN"): combineIntegers,
            (b"SLOWLOG", b"RESET"): combineSame,
            (b"CONFIG", b"get", b"maxmemory"): combineArrays,
            (b"CONFIG", b"SET", b"maxmemory", b"1"): combineSame,
            (b"CONFIG", b"RESETSTAT"): combineSame,
            (b"CONFIG", b"REWRITE"): combineSame,
        }
        for request, combine in cases.items():
            planned = plan(request[0].decode().lower(), list(request), 3)
            self.assertIs(planned.combine, combine, request)
            self.assertIsNone(planned.reply)
        self.assertIsNotNone(plan("info", [b"INFO"], 3).combine)

    def test_unsupported(self) -> None:
        """
        Other SLOWLOG and CONFIG subcommands, and CLUSTER subcommands off
        Envoy's list, are answered by the proxy.
        """
        self.assertEqual(plan("config", [b"CONFIG", b"HELP"], 2).reply, UNSUPPORTED)
        self.assertEqual(plan("slowlog", [b"SLOWLOG", b"HELP"], 2).reply, UNSUPPORTED)
        self.assertEqual(plan("cluster", [b"CLUSTER", b"MyId"], 2).reply,
                         b"-ERR cluster subcommand 'myid' is not supported\r\n")

    def test_oneShard(self) -> None:
        """
        CLUSTER's listed subcommands and RANDOMKEY go, unchanged, to the
        shard C{choose} picks.
        """
        for request in ([b"CLUSTER", b"KEYSLOT", b"foo"], [b"cluster", b"Shards"],
                        [b"RANDOMKEY"]):
            planned = plan(request[0].decode().lower(), request, 5, choose=lambda n: n - 2)
            self.assertEqual((planned.shard, planned.upstream), (3, request))

    def test_infoShard(self) -> None:
        """
        INFO.SHARD <i> [section] is INFO [section] on shard i; a bad index
        or argument count gets Envoy's errors.
        """
        planned = plan("info.shard", [b"INFO.SHARD", b"1", b"memory"], 2)
        self.assertEqual((planned.shard, planned.upstream), (1, [b"INFO", b"memory"]))
        planned = plan("info.shard", [b"info.shard", b"0"], 2)
        self.assertEqual((planned.shard, planned.upstream), (0, [b"INFO"]))
        errors = {
            b"x": b"-ERR invalid shard_id - must be a numeric shard index\r\n",
            b"-1": b"-ERR invalid shard_id - must be a numeric shard index\r\n",
            b"65536": b"-ERR invalid shard_id - must be a numeric shard index\r\n",
            b"2": b"-ERR shard_id 2 out of range (0-1)\r\n",
        }
        for index, reply in errors.items():
            self.assertEqual(plan("info.shard", [b"INFO.SHARD", index], 2).reply, reply)
        self.assertEqual(plan("info.shard", [b"Info.Shard", b"0", b"a", b"b"], 2).reply,
                         b"-wrong number of arguments for 'Info.Shard' command\r\n")
