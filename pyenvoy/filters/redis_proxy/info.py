"""
Aggregation of the replies to C{INFO} across the shards of a redis_proxy
cluster, the way Envoy's redis_proxy (1.40) merges them.

Envoy sends C{INFO [section]} to every shard and builds one reply from a fixed
template of keys (L{_TEMPLATE}):

  - a shard's reply is split on LF and each line trimmed; C{# Name} starts a
    section, C{key:value} lines are looked up by key alone (whatever section
    they appear in); keys outside the template are dropped;
  - per key: the first non-empty value, the sum or the maximum of the values
    that parse as 64-bit integers, or a constant (C{redis_mode:cluster},
    C{cluster_enabled:1}); C{*_human} keys are recomputed from the aggregated
    byte count (and left out when it is not positive); C{db0} sums C{keys}
    and C{expires} and averages C{avg_ttl} pairwise as each shard is merged
    (so the first shard's TTL is halved);
  - the output lists the template's keys in order, one C{# Section} header
    per section and a blank line between sections.  Sum and maximum keys are
    always printed (C{0} when no shard had them), first-value keys only when
    some shard gave a value, C{db0} only when some shard reported it.

With a section argument only keys of that section (compared ignoring case)
are read from the shards and printed: C{INFO all} or C{INFO everything}
therefore yields an empty bulk string.

Error precedence: if any shard replied with an error, the first error (in
shard order) is the reply; otherwise any reply that is neither a bulk string
nor a RESP3 verbatim string (whose C{txt:} prefix is dropped) gives
L{UNEXPECTED_REPLY}.
"""

from __future__ import annotations

import re
from typing import Union

#: The error Envoy answers with when a shard's reply is not text.
UNEXPECTED_REPLY = b"-unexpected response type received from shard\r\n"

#: A section filter as returned by L{infoSection}: the lower-cased section
#: name, or C{None} for no filter.
Section = Union[bytes, None]

# The template, in output order.  Per key, a suffix gives the aggregation:
# none = sum, "^" = maximum, "<" = first non-empty value, "=V" = constant V.
# "NAME_human" is NAME formatted as a byte count; "db0" is the keyspace merge.
_TEMPLATE: tuple[tuple[str, str], ...] = (
    ("Server", """
        redis_version< redis_git_sha1< redis_git_dirty< redis_build_id<
        redis_mode=cluster os< arch_bits< monotonic_clock< gcc_version<
        multiplexing_api< atomicvar_api< process_supervised< run_id<
        server_time_usec< uptime_in_seconds^ uptime_in_days^ hz<
        configured_hz< lru_clock< executable< config_file<
        io_threads_active^"""),
    ("Clients", """
        connected_clients cluster_connections maxclients<
        client_recent_max_input_buffer^ client_recent_max_output_buffer^
        blocked_clients tracking_clients pubsub_clients watching_clients
        clients_in_timeout_table total_watched_keys total_blocking_keys
        total_blocking_keys_on_nokey"""),
    ("Memory", """
        used_memory used_memory_human used_memory_rss used_memory_rss_human
        used_memory_peak^ used_memory_peak_human used_memory_peak_time<
        used_memory_overhead used_memory_startup used_memory_dataset
        total_system_memory total_system_memory_human used_memory_lua
        used_memory_vm_eval used_memory_lua_human used_memory_scripts_eval
        number_of_cached_scripts number_of_functions number_of_libraries
        used_memory_vm_functions used_memory_vm_total
        used_memory_vm_total_human used_memory_functions used_memory_scripts
        used_memory_scripts_human maxmemory maxmemory_human maxmemory_policy<
        mem_fragmentation_bytes allocator_frag_bytes allocator_rss_bytes
        rss_overhead_bytes allocator_allocated allocator_active
        allocator_resident allocator_muzzy mem_not_counted_for_evict
        mem_clients_slaves mem_clients_normal mem_cluster_links
        mem_cluster_slot_migration_output_buffer
        mem_cluster_slot_migration_input_buffer
        mem_cluster_slot_migration_input_buffer_peak^ mem_aof_buffer
        mem_replication_backlog mem_total_replication_buffers mem_allocator<
        mem_overhead_db_hashtable_rehashing active_defrag_running^
        lazyfree_pending_objects lazyfreed_objects"""),
    ("Stats", """
        total_connections_received total_commands_processed
        instantaneous_ops_per_sec total_net_input_bytes total_net_output_bytes
        total_net_repl_input_bytes total_net_repl_output_bytes
        instantaneous_input_kbps instantaneous_output_kbps
        instantaneous_input_repl_kbps instantaneous_output_repl_kbps
        rejected_connections sync_full sync_partial_ok sync_partial_err
        expired_subkeys expired_keys expired_stale_perc^
        expired_time_cap_reached_count expire_cycle_cpu_milliseconds
        evicted_keys evicted_clients evicted_scripts
        total_eviction_exceeded_time current_eviction_exceeded_time^
        keyspace_hits keyspace_misses pubsub_channels pubsub_patterns
        pubsubshard_channels latest_fork_usec^ total_forks
        migrate_cached_sockets slave_expires_tracked_keys active_defrag_hits
        active_defrag_misses active_defrag_key_hits active_defrag_key_misses
        total_active_defrag_time current_active_defrag_time^
        tracking_total_keys tracking_total_items tracking_total_prefixes
        unexpected_error_replies total_error_replies
        dump_payload_sanitizations total_reads_processed
        total_writes_processed io_threaded_reads_processed
        io_threaded_writes_processed client_query_buffer_limit_disconnections
        client_output_buffer_limit_disconnections reply_buffer_shrinks
        reply_buffer_expands eventloop_cycles eventloop_duration_sum
        eventloop_duration_cmd_sum instantaneous_eventloop_cycles_per_sec
        instantaneous_eventloop_duration_usec^ acl_access_denied_auth
        acl_access_denied_cmd acl_access_denied_key
        acl_access_denied_channel"""),
    ("CPU", """
        used_cpu_sys used_cpu_user used_cpu_sys_children
        used_cpu_user_children used_cpu_sys_main_thread
        used_cpu_user_main_thread"""),
    ("Cluster", "cluster_enabled=1"),
    ("Keyspace", "db0"),
)

_SUM, _MAX, _FIRST, _CONSTANT, _HUMAN, _KEYSPACE = range(6)
_INT64 = 1 << 63
_UINT64 = 1 << 64


def _parseTemplate() -> list[tuple[bytes, bytes, int, bytes]]:
    """
    Expand L{_TEMPLATE} into C{(section, key, kind, extra)} rows, where
    C{extra} is a constant's value or a C{*_human} key's source key.
    """
    rows = []
    for section, keys in _TEMPLATE:
        for token in keys.split():
            extra = ""
            if "=" in token:
                token, extra = token.split("=")
                kind = _CONSTANT
            elif token[-1] in "^<":
                kind = _MAX if token[-1] == "^" else _FIRST
                token = token[:-1]
            elif token.endswith("_human"):
                kind, extra = _HUMAN, token[: -len("_human")]
            elif token == "db0":
                kind = _KEYSPACE
            else:
                kind = _SUM
            rows.append(
                (section.encode(), token.encode(), kind, extra.encode()))
    return rows


_ROWS = _parseTemplate()
_KINDS = {key: kind for _, key, kind, _ in _ROWS}
_DIGITS = re.compile(rb"[+-]?([0-9]+)\Z")
_LEADING_DIGITS = re.compile(rb"[0-9]*")


def infoSection(request: list[bytes]) -> Section:
    """
    The section filter Envoy applies to C{INFO [section [...]]}.

    Only the first argument counts.  Any name is accepted as the filter; one
    that names no template section (C{all}, C{everything}, C{default}, ...)
    makes the reply empty.

    @param request: the command and its arguments, C{request[0]} being
        C{INFO} in any case.
    @return: the lower-cased first argument, or C{None} when there is none
        or it is empty (no filter: every section).
    """
    if len(request) < 2 or not request[1]:
        return None
    return request[1].lower()


def _toInt64(value: bytes) -> int | None:
    """
    Parse a decimal 64-bit signed integer the strict way Envoy does (ASCII
    whitespace around it and a sign allowed, nothing else).

    @return: the integer, or C{None} if C{value} is not one or overflows.
    """
    value = value.strip()
    if _DIGITS.match(value) is None:
        return None
    number = int(value)
    return number if -_INT64 <= number < _INT64 else None


def _toUInt64Prefix(value: bytes) -> int:
    """
    Parse an unsigned count in a keyspace line the lenient way Envoy does:
    a negative number is C{0}, trailing junk is ignored (C{12abc} is C{12})
    and an overflow saturates at 2**64 - 1.
    """
    value = value.strip()
    if value.startswith(b"-"):
        return 0
    if value.startswith(b"+"):
        value = value[1:]
    digits = _LEADING_DIGITS.match(value).group()  # type: ignore[union-attr]
    return min(int(digits or b"0"), _UINT64 - 1)


def _keyspaceCounts(value: bytes) -> tuple[int, int, int]:
    """
    The C{keys}, C{expires} and C{avg_ttl} of a C{db0} value (each C{0} if
    missing; the last occurrence wins).
    """
    counts = {b"keys": 0, b"expires": 0, b"avg_ttl": 0}
    for pair in value.split(b","):
        name, _, number = pair.partition(b"=")
        if name in counts:
            counts[name] = _toUInt64Prefix(number)
    return counts[b"keys"], counts[b"expires"], counts[b"avg_ttl"]


def _mergeKeyspace(old: bytes, new: bytes) -> bytes:
    """
    Merge one shard's C{db0} value into the running one: counts add up and
    C{avg_ttl} is the mean of the two (all in unsigned 64-bit arithmetic).
    """
    oldKeys, oldExpires, oldTtl = _keyspaceCounts(old) if old else (0, 0, 0)
    keys, expires, ttl = _keyspaceCounts(new)
    return b"keys=%d,expires=%d,avg_ttl=%d" % (
        (keys + oldKeys) % _UINT64,
        (expires + oldExpires) % _UINT64,
        (ttl + oldTtl) % _UINT64 // 2,
    )


def _bytesToHuman(count: int) -> bytes:
    """
    Format a positive byte count as Redis does: C{B} below 1024, then
    C{%.2f} with the K/M/G/T/P unit, and plain bytes again from 1024P on.
    """
    for power, unit in enumerate("KMGTP", 1):
        if count < 1024 ** (power + 1):
            if count < 1024:
                break
            return b"%.2f%s" % (count / 1024**power, unit.encode())
    return b"%dB" % count


def _text(reply: bytes) -> bytes | None:
    """
    The text of a bulk or verbatim string reply (without the verbatim
    format prefix), or C{None} for any other type (null bulk included).
    """
    kind = reply[:1]
    if kind not in (b"$", b"="):
        return None
    end = reply.index(b"\r\n")
    length = int(reply[1:end])
    if length < 0:
        return None
    payload = reply[end + 2:end + 2 + length]
    return payload[4:] if kind == b"=" and len(payload) >= 4 else payload


def _errorReply(reply: bytes) -> bytes | None:
    """
    The RESP2 error to relay if C{reply} is a simple or blob error, else
    C{None}.
    """
    if reply[:1] == b"-":
        return reply
    if reply[:1] == b"!":
        end = reply.index(b"\r\n")
        length = int(reply[1:end])
        return b"-" + reply[end + 2:end + 2 + length] + b"\r\n"
    return None


def aggregateInfo(replies: list[bytes], section: Section | str) -> bytes:
    """
    Combine the shards' replies to C{INFO} into the reply Envoy sends.

    @param replies: each shard's complete raw RESP reply, in shard order.
    @param section: the filter from L{infoSection} (C{None} for none).
    @return: the complete RESP reply: the first shard error, or
        L{UNEXPECTED_REPLY}, or a bulk string of the aggregated text.
    """
    for reply in replies:
        error = _errorReply(reply)
        if error is not None:
            return error
    texts = [_text(reply) for reply in replies]
    if any(text is None for text in texts):
        return UNEXPECTED_REPLY
    if isinstance(section, str):
        section = section.encode()
    wanted = section.lower() if section else None

    def included(name: bytes) -> bool:
        return wanted is None or name.lower() == wanted

    numbers: dict[bytes, int] = {}
    strings: dict[bytes, bytes] = {}
    for text in texts:
        current = b""
        for line in text.split(b"\n"):  # type: ignore[union-attr]
            line = line.strip()
            if not line:
                continue
            if line.startswith(b"#"):
                current = line[1:].lstrip()
                continue
            if not included(current):
                continue
            key, _, value = line.partition(b":")
            kind = _KINDS.get(key)
            if kind == _FIRST:
                if not strings.get(key):
                    strings[key] = value
            elif kind in (_SUM, _MAX):
                number = _toInt64(value)
                if number is None:
                    continue
                if kind == _SUM:
                    total = numbers.get(key, 0) + number
                    numbers[key] = (total + _INT64) % _UINT64 - _INT64
                else:
                    numbers[key] = max(numbers.get(key, 0), number)
            elif kind == _KEYSPACE:
                strings[key] = _mergeKeyspace(strings.get(key, b""), value)

    out: list[bytes] = []
    lastSection = None
    for name, key, kind, extra in _ROWS:
        if not included(name):
            continue
        if kind in (_SUM, _MAX):
            value = b"%d" % numbers.get(key, 0)
        elif kind == _HUMAN:
            source = numbers.get(extra, 0)
            value = _bytesToHuman(source) if source > 0 else b""
        elif kind == _CONSTANT:
            value = extra
        else:
            value = strings.get(key, b"")
        if not value:
            continue
        if name != lastSection:
            if lastSection is not None:
                out.append(b"\r\n")
            out.append(b"# " + name + b"\r\n")
            lastSection = name
        out.append(key + b":" + value + b"\r\n")
    body = b"".join(out)
    return b"$%d\r\n%s\r\n" % (len(body), body)
