"""
redis_proxy's configuration: Envoy's C{RedisProxy} message, validated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyenvoy.config.reader import Section, dataSourceText

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"

_UNSUPPORTED = ("external_auth_provider", "custom_commands", "cluster")
_SETTINGS_UNSUPPORTED = ("dns_cache_config", "connection_rate_limit")
_ROUTE_UNSUPPORTED = ("key_formatter", "read_command_policy")

_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


@dataclass(frozen=True)
class MirrorPolicy:
    """
    One C{request_mirror_policy}: copy matching commands to C{cluster}.

    @ivar percent: the share of commands mirrored, 0-100 (Envoy's
        C{runtime_fraction} default value; runtime overrides do not exist
        in pyenvoy).
    """

    cluster: str
    excludeReadCommands: bool
    percent: float


@dataclass(frozen=True)
class Route:
    """
    A prefix route (or the catch-all route, whose prefix is empty).
    """

    prefix: bytes
    removePrefix: bool
    cluster: str
    mirrors: tuple[MirrorPolicy, ...]


@dataclass(frozen=True)
class Fault:
    """
    One C{faults} entry: an injected C{ERROR} reply or C{DELAY}.

    @ivar percent: the share of commands it hits, a whole percentage as
        Envoy computes it (C{numerator * 100 // denominator}), so 5 per
        C{TEN_THOUSAND} is 0 and never fires.
    @ivar delay: seconds, 0 when not set (then a C{DELAY} fault delays
        nothing, as in Envoy).
    """

    errorFault: bool
    percent: int
    delay: float
    commands: tuple[str, ...]


@dataclass(frozen=True)
class RedisProxyConfig:
    """
    A validated C{RedisProxy} message.
    """

    statPrefix: str
    opTimeout: float
    enableHashtagging: bool
    enableRedirection: bool
    maxBufferSizeBeforeFlush: int
    bufferFlushTimeout: float
    maxUpstreamUnknownConnections: int
    enableCommandStats: bool
    routes: tuple[Route, ...]
    caseInsensitive: bool
    catchAll: Route | None
    authPasswords: tuple[bytes, ...]
    authUsername: bytes
    faults: tuple[Fault, ...]
    latencyInMicros: bool


def _fractionalPercent(section: Section) -> tuple[int, int] | None:
    """
    The numerator and denominator of a C{RuntimeFractionalPercent}'s
    C{default_value} (C{runtime_key} is read and ignored: pyenvoy has no
    runtime); C{None} when it is missing.
    """
    section.string("runtime_key")
    value = section.section("default_value", required=True)
    if value is None:
        return None
    numerator = value.integer("numerator", 0, minimum=0) or 0
    denominator = value.enum("denominator", tuple(_DENOMINATORS), "HUNDRED")
    value.finish()
    return numerator, _DENOMINATORS[denominator]


def _percent(section: Section | None) -> float:
    """
    A C{RuntimeFractionalPercent} as a percentage (100 when not set).
    """
    if section is None:
        return 100.0
    fraction = _fractionalPercent(section)
    return 0.0 if fraction is None else fraction[0] * 100.0 / fraction[1]


def _faultPercent(section: Section) -> int:
    """
    A fault's C{fault_enabled} as Envoy's redis fault manager reads it: a
    whole percentage, C{numerator * 100 // denominator}, compared with a
    random number in 0-99.
    """
    fraction = _fractionalPercent(section)
    return 0 if fraction is None else fraction[0] * 100 // fraction[1]


def _parseMirrors(section: Section, context: Any) -> tuple[MirrorPolicy, ...]:
    mirrors = []
    for entry in section.sections("request_mirror_policy"):
        cluster = context.requireCluster(entry, "cluster")
        fraction = entry.section("runtime_fraction")
        percent = _percent(fraction)
        if fraction is not None:
            fraction.finish()
        exclude = entry.boolean("exclude_read_commands")
        entry.finish()
        if cluster:
            mirrors.append(MirrorPolicy(cluster, exclude, percent))
    return tuple(mirrors)


def _parseRoute(section: Section, context: Any, catchAll: bool) -> Route | None:
    prefix = b"" if catchAll else (section.string("prefix", "") or "").encode("utf-8")
    removePrefix = False if catchAll else section.boolean("remove_prefix")
    cluster = context.requireCluster(section, "cluster")
    mirrors = _parseMirrors(section, context)
    section.finish(unsupported=_ROUTE_UNSUPPORTED)
    if not cluster:
        return None
    return Route(prefix, removePrefix, cluster, mirrors)


def _parseFaults(section: Section) -> tuple[Fault, ...]:
    faults = []
    for entry in section.sections("faults"):
        kind = entry.enum("fault_type", ("DELAY", "ERROR"), "DELAY")
        enabled = entry.section("fault_enabled", required=True)
        percent = _faultPercent(enabled) if enabled is not None else 0
        if enabled is not None:
            enabled.finish()
        # Envoy's delay defaults to zero, for DELAY faults too.
        delay = entry.duration("delay", 0.0) or 0.0
        commands = tuple(c.lower() for c in entry.strings("commands"))
        entry.finish()
        faults.append(Fault(kind == "ERROR", percent, delay, commands))
    return tuple(faults)


def _password(section: Section | None) -> bytes | None:
    if section is None:
        return None
    found = dataSourceText(section)
    return found[0].encode("utf-8") if found else None


def parseConfig(section: Section, context: Any) -> RedisProxyConfig:
    """
    Validate a C{RedisProxy} C{typed_config}.
    """
    statPrefix = section.string("stat_prefix", required=True, nonEmpty=True) or ""
    settings = section.section("settings", required=True)
    if settings is None:
        # Reported as missing; read the defaults without a second error.
        settings = Section({"op_timeout": "0s"}, section.pathOf("settings"), section.problems)
    opTimeout = settings.duration("op_timeout", required=True) or 0.0
    hashtagging = settings.boolean("enable_hashtagging")
    redirection = settings.boolean("enable_redirection")
    maxBuffer = settings.uint32Value("max_buffer_size_before_flush", 0) or 0
    flushTimeout = settings.duration("buffer_flush_timeout", 0.003)
    unknown = settings.uint32Value("max_upstream_unknown_connections", 100)
    commandStats = settings.boolean("enable_command_stats")
    settings.enum("read_policy", ("MASTER",), "MASTER",
                  unsupported=("PREFER_MASTER", "REPLICA", "PREFER_REPLICA", "ANY"))
    settings.finish(unsupported=_SETTINGS_UNSUPPORTED)

    routes: list[Route] = []
    catchAll = None
    caseInsensitive = False
    prefixRoutes = section.section("prefix_routes")
    if prefixRoutes is not None:
        caseInsensitive = prefixRoutes.boolean("case_insensitive")
        seen: set[bytes] = set()
        for entry in prefixRoutes.sections("routes"):
            route = _parseRoute(entry, context, catchAll=False)
            if route is None:
                continue
            key = route.prefix.lower() if caseInsensitive else route.prefix
            if key in seen:
                entry.error(f"prefix {route.prefix.decode()!r} already exists", "prefix")
            seen.add(key)
            routes.append(route)
        catchAllSection = prefixRoutes.section("catch_all_route")
        if catchAllSection is not None:
            catchAll = _parseRoute(catchAllSection, context, catchAll=True)
        prefixRoutes.finish()
    if not routes and catchAll is None and not section.problems.errors:
        section.error("prefix_routes needs routes or a catch_all_route", "prefix_routes")

    passwords: list[bytes] = []
    legacy = _password(section.section("downstream_auth_password"))
    if legacy is not None:
        passwords.append(legacy)
    for entry in section.sections("downstream_auth_passwords"):
        password = _password(entry)
        if password is not None:
            passwords.append(password)
    username = _password(section.section("downstream_auth_username")) or b""
    faults = _parseFaults(section)
    micros = section.boolean("latency_in_micros")
    section.finish(unsupported=_UNSUPPORTED)
    return RedisProxyConfig(
        statPrefix=statPrefix, opTimeout=opTimeout, enableHashtagging=hashtagging,
        enableRedirection=redirection, maxBufferSizeBeforeFlush=maxBuffer,
        bufferFlushTimeout=flushTimeout if flushTimeout is not None else 0.003,
        maxUpstreamUnknownConnections=100 if unknown is None else unknown,
        enableCommandStats=commandStats,
        routes=tuple(sorted(routes, key=lambda r: -len(r.prefix))),
        caseInsensitive=caseInsensitive, catchAll=catchAll,
        authPasswords=tuple(passwords), authUsername=username, faults=faults,
        latencyInMicros=micros,
    )
