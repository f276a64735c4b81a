"""
Redis pieces for integration tests: real redis-servers on free loopback
ports, a pyenvoy config with redis_proxy in front of them, and clients
(redis-py in a thread, redis-cli and redis-benchmark as processes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.mongo import freePort
from tests.support.net import endpoint

REDIS_PROXY = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
PROTOCOL_OPTIONS = ("type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3."
                    "RedisProtocolOptions")
DEADLINE = 20.0


def _exe(case: TestCase, name: str) -> str:
    path = shutil.which(name)
    case.assertTrue(path, f"{name} is not installed (apt-get install redis-server redis-tools;"
                          " `make system-deps` does it)")
    return path  # type: ignore[return-value]


class RedisServer:
    """
    One real redis-server, stopped when the test ends; can be stopped and
    started again on the same port (a shard going down and coming back).
    """

    def __init__(self, case: TestCase, password: str | None = None) -> None:
        self.case = case
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.directory = tempfile.mkdtemp(prefix="pyenvoy-redis-")
        case.addCleanup(shutil.rmtree, self.directory, True)
        case.addCleanup(self.stop)

    def _spawn(self) -> None:
        args = [_exe(self.case, "redis-server"), "--port", str(self.port), "--bind",
                "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.directory,
                "--logfile", os.path.join(self.directory, f"redis-{self.port}.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self) -> "RedisServer":
        """
        Start (on a free port the first time, on the same port after) and
        wait until it answers PING.
        """
        restart = bool(self.port)
        for _ in range(1 if restart else 5):
            if not restart:
                self.port = freePort()
            self._spawn()
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end and self.process is not None \
                    and self.process.poll() is None:
                if await deferToThread(self._answers):
                    return self
                await deferLater(reactor, 0.05, lambda: None)
            self.stop()
        self.case.fail(f"redis-server did not start on port {self.port}")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(self.client(socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self, **kwargs: Any) -> Any:
        """
        A redis-py client straight to this server (for checking what it holds).
        """
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=kwargs.pop("socket_timeout", 5), **kwargs)

    def stop(self) -> None:
        """
        Kill the server (its data is gone: nothing is saved).
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()

    def keys(self) -> set[bytes]:
        """
        Every key the server holds (blocking; call in a thread).
        """
        return set(self.client().keys("*"))


async def startRedisServers(case: TestCase, count: int,
                            password: str | None = None) -> list[RedisServer]:
    """
    Start C{count} redis-servers.
    """
    servers = []
    for _ in range(count):
        servers.append(await RedisServer(case, password).start())
    return servers


def redisProxyConfig(ports: list[int], proxy: dict | None = None, cluster: dict | None = None,
                     extraClusters: list[dict] | None = None) -> dict:
    """
    A bootstrap with a redis_proxy listener ("proxy", port 0) whose
    catch-all route is cluster "redis": a RING_HASH cluster of C{ports}.
    """
    config: dict[str, Any] = {"@type": REDIS_PROXY, "stat_prefix": "test",
                              "settings": {"op_timeout": "5s"},
                              "prefix_routes": {"catch_all_route": {"cluster": "redis"}}}
    config.update(proxy or {})
    clusterConfig = shardCluster("redis", ports)
    clusterConfig.update(cluster or {})
    return {"static_resources": {
        "listeners": [{
            "name": "proxy",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.redis_proxy",
                                            "typed_config": config}]}],
        }],
        "clusters": [clusterConfig] + list(extraClusters or []),
    }}


def shardCluster(name: str, ports: list[int], lbPolicy: str = "RING_HASH") -> dict:
    """
    A cluster of redis-servers on 127.0.0.1.
    """
    return {"name": name, "connect_timeout": "1s", "lb_policy": lbPolicy,
            "load_assignment": {"cluster_name": name,
                                "endpoints": [{"lb_endpoints": [endpoint(p) for p in ports]}]}}


def inThread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """
    Run a blocking client call off the reactor thread (the proxy under
    test runs on the reactor).
    """
    return deferToThread(function, *args, **kwargs)


async def redisCli(case: TestCase, port: int, *args: str, stdin: bytes | None = None
                   ) -> tuple[bytes, int]:
    """
    Run C{redis-cli -p port args...}; return its output and exit code.
    """
    exe = _exe(case, "redis-cli")
    if stdin is not None:
        # getProcessOutputAndValue cannot feed stdin: go through a file.
        path = os.path.join(tempfile.mkdtemp(prefix="pyenvoy-cli-"), "in")
        case.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "wb") as f:
            f.write(stdin)
        out, err, code = await getProcessOutputAndValue(
            "/bin/sh", ["-c", f'exec "{exe}" -h 127.0.0.1 -p {port} {" ".join(args)} < "{path}"'],
            env=os.environ)
    else:
        out, err, code = await getProcessOutputAndValue(
            exe, ["-h", "127.0.0.1", "-p", str(port), *args], env=os.environ)
    return out + err, code
