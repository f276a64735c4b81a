"""
Tests for L{pyenvoy.filters.redis_proxy.info}, the aggregation of C{INFO}
replies across redis_proxy shards.

The golden cases were recorded from the real Envoy 1.40.0 binary
(C{redis_proxy} with a catch-all route to a two-host C{MAGLEV} cluster) in
front of two real redis-server 7.0.15 processes: a recording relay between
Envoy and the two servers captured the exact replies Envoy received from
each shard for the very request whose aggregated reply is recorded, so even
the volatile keys (uptime, memory, CPU, server time) are exact.

The other cases use hand-written shard replies; their expectations follow
Envoy's C{info_command_handler.cc} and were each checked against the same
Envoy 1.40.0 binary with scripted fake shards (plus 300 randomised replies
compared byte for byte).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.filters.redis_proxy.info import (
    UNEXPECTED_REPLY,
    aggregateInfo,
    infoSection,
)


def _bulk(text: str) -> bytes:
    """
    Encode C{text}, written with LF line ends, as a RESP bulk string whose
    lines end with CRLF.
    """
    data = text.replace("\n", "\r\n").encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _shard(*lines: str) -> bytes:
    """
    A bulk string reply made of C{lines}, each ended by CRLF.
    """
    return _bulk("".join(line + "\n" for line in lines))


def _body(reply: bytes) -> list[bytes]:
    """
    The lines of a bulk string reply, checking its length header.
    """
    header, _, rest = reply.partition(b"\r\n")
    assert rest.endswith(b"\r\n") and int(header[1:]) == len(rest) - 2
    return rest[:-2].split(b"\r\n")


# Recorded: the two shards' replies to INFO and Envoy's reply to the client.
SHARD_A = _bulk("""\
# Server
redis_version:7.0.15
redis_git_sha1:00000000
redis_git_dirty:0
redis_build_id:ae4d7c971a948f0
redis_mode:standalone
os:Linux 6.18.44-fc-v782 x86_64
arch_bits:64
monotonic_clock:POSIX clock_gettime
multiplexing_api:epoll
atomicvar_api:c11-builtin
gcc_version:12.2.0
process_id:5973
process_supervised:no
run_id:ace34f21f549570b85ed89d35d4e4cb79e420e3f
tcp_port:28379
server_time_usec:1795702586237555
uptime_in_seconds:84
uptime_in_days:0
hz:10
configured_hz:10
lru_clock:540474
executable:/tmp/rp28/redis-server
config_file:
io_threads_active:0

# Clients
connected_clients:1
cluster_connections:0
maxclients:10000
client_recent_max_input_buffer:0
client_recent_max_output_buffer:0
blocked_clients:0
tracking_clients:0
clients_in_timeout_table:0

# Memory
used_memory:1016032
used_memory_human:992.22K
used_memory_rss:7151616
used_memory_rss_human:6.82M
used_memory_peak:1033056
used_memory_peak_human:1008.84K
used_memory_peak_perc:98.35%
used_memory_overhead:876640
used_memory_startup:876272
used_memory_dataset:139392
used_memory_dataset_perc:99.74%
allocator_allocated:2024672
allocator_active:2199552
allocator_resident:4870144
total_system_memory:25276063744
total_system_memory_human:23.54G
used_memory_lua:32768
used_memory_vm_eval:32768
used_memory_lua_human:32.00K
used_memory_scripts_eval:0
number_of_cached_scripts:0
number_of_functions:0
number_of_libraries:0
used_memory_vm_functions:33792
used_memory_vm_total:66560
used_memory_vm_total_human:65.00K
used_memory_functions:200
used_memory_scripts:200
used_memory_scripts_human:200B
maxmemory:0
maxmemory_human:0B
maxmemory_policy:noeviction
allocator_frag_ratio:1.09
allocator_frag_bytes:174880
allocator_rss_ratio:2.21
allocator_rss_bytes:2670592
rss_overhead_ratio:1.47
rss_overhead_bytes:2281472
mem_fragmentation_ratio:7.33
mem_fragmentation_bytes:6176184
mem_not_counted_for_evict:0
mem_replication_backlog:0
mem_total_replication_buffers:0
mem_clients_slaves:0
mem_clients_normal:0
mem_cluster_links:0
mem_aof_buffer:0
mem_allocator:jemalloc-5.3.0
active_defrag_running:0
lazyfree_pending_objects:0
lazyfreed_objects:0

# Persistence
loading:0
async_loading:0
current_cow_peak:0
current_cow_size:0
current_cow_size_age:0
current_fork_perc:0.00
current_save_keys_processed:0
current_save_keys_total:0
rdb_changes_since_last_save:4
rdb_bgsave_in_progress:0
rdb_last_save_time:1795702502
rdb_last_bgsave_status:ok
rdb_last_bgsave_time_sec:-1
rdb_current_bgsave_time_sec:-1
rdb_saves:0
rdb_last_cow_size:0
rdb_last_load_keys_expired:0
rdb_last_load_keys_loaded:0
aof_enabled:0
aof_rewrite_in_progress:0
aof_rewrite_scheduled:0
aof_last_rewrite_time_sec:-1
aof_current_rewrite_time_sec:-1
aof_last_bgrewrite_status:ok
aof_rewrites:0
aof_rewrites_consecutive_failures:0
aof_last_write_status:ok
aof_last_cow_size:0
module_fork_in_progress:0
module_fork_last_cow_size:0

# Stats
total_connections_received:9
total_commands_processed:20
instantaneous_ops_per_sec:1
total_net_input_bytes:594
total_net_output_bytes:11555
total_net_repl_input_bytes:0
total_net_repl_output_bytes:0
instantaneous_input_kbps:0.05
instantaneous_output_kbps:0.01
instantaneous_input_repl_kbps:0.00
instantaneous_output_repl_kbps:0.00
rejected_connections:0
sync_full:0
sync_partial_ok:0
sync_partial_err:0
expired_keys:0
expired_stale_perc:0.00
expired_time_cap_reached_count:0
expire_cycle_cpu_milliseconds:2
evicted_keys:0
evicted_clients:0
total_eviction_exceeded_time:0
current_eviction_exceeded_time:0
keyspace_hits:0
keyspace_misses:0
pubsub_channels:0
pubsub_patterns:0
pubsubshard_channels:0
latest_fork_usec:0
total_forks:0
migrate_cached_sockets:0
slave_expires_tracked_keys:0
active_defrag_hits:0
active_defrag_misses:0
active_defrag_key_hits:0
active_defrag_key_misses:0
total_active_defrag_time:0
current_active_defrag_time:0
tracking_total_keys:0
tracking_total_items:0
tracking_total_prefixes:0
unexpected_error_replies:0
total_error_replies:0
dump_payload_sanitizations:0
total_reads_processed:23
total_writes_processed:14
io_threaded_reads_processed:0
io_threaded_writes_processed:0
reply_buffer_shrinks:2
reply_buffer_expands:1

# Replication
role:master
connected_slaves:0
master_failover_state:no-failover
master_replid:f2d112c8e4da8f1efd1d496896c1fb2c998380e4
master_replid2:0000000000000000000000000000000000000000
master_repl_offset:0
second_repl_offset:-1
repl_backlog_active:0
repl_backlog_size:1048576
repl_backlog_first_byte_offset:0
repl_backlog_histlen:0

# CPU
used_cpu_sys:0.076154
used_cpu_user:0.092819
used_cpu_sys_children:0.000000
used_cpu_user_children:0.000000
used_cpu_sys_main_thread:0.075063
used_cpu_user_main_thread:0.093829

# Modules

# Errorstats

# Cluster
cluster_enabled:0

# Keyspace
db0:keys=2,expires=1,avg_ttl=999948
""")

SHARD_B = _bulk("""\
# Server
redis_version:7.0.15
redis_git_sha1:00000000
redis_git_dirty:0
redis_build_id:ae4d7c971a948f0
redis_mode:standalone
os:Linux 6.18.44-fc-v782 x86_64
arch_bits:64
monotonic_clock:POSIX clock_gettime
multiplexing_api:epoll
atomicvar_api:c11-builtin
gcc_version:12.2.0
process_id:5979
process_supervised:no
run_id:bac99b71d3555507549e2afd83dddd620d41ff65
tcp_port:28380
server_time_usec:1795702586238208
uptime_in_seconds:84
uptime_in_days:0
hz:10
configured_hz:10
lru_clock:540474
executable:/tmp/rp28/redis-server
config_file:
io_threads_active:0

# Clients
connected_clients:1
cluster_connections:0
maxclients:10000
client_recent_max_input_buffer:0
client_recent_max_output_buffer:0
blocked_clients:0
tracking_clients:0
clients_in_timeout_table:0

# Memory
used_memory:1040688
used_memory_human:1016.30K
used_memory_rss:6877184
used_memory_rss_human:6.56M
used_memory_peak:1040688
used_memory_peak_human:1016.30K
used_memory_peak_perc:100.22%
used_memory_overhead:876608
used_memory_startup:876240
used_memory_dataset:164080
used_memory_dataset_perc:99.78%
allocator_allocated:1834208
allocator_active:1994752
allocator_resident:4665344
total_system_memory:25276063744
total_system_memory_human:23.54G
used_memory_lua:32768
used_memory_vm_eval:32768
used_memory_lua_human:32.00K
used_memory_scripts_eval:0
number_of_cached_scripts:0
number_of_functions:0
number_of_libraries:0
used_memory_vm_functions:33792
used_memory_vm_total:66560
used_memory_vm_total_human:65.00K
used_memory_functions:200
used_memory_scripts:200
used_memory_scripts_human:200B
maxmemory:3000000
maxmemory_human:2.86M
maxmemory_policy:noeviction
allocator_frag_ratio:1.09
allocator_frag_bytes:160544
allocator_rss_ratio:2.34
allocator_rss_bytes:2670592
rss_overhead_ratio:1.47
rss_overhead_bytes:2211840
mem_fragmentation_ratio:6.88
mem_fragmentation_bytes:5877096
mem_not_counted_for_evict:0
mem_replication_backlog:0
mem_total_replication_buffers:0
mem_clients_slaves:0
mem_clients_normal:0
mem_cluster_links:0
mem_aof_buffer:0
mem_allocator:jemalloc-5.3.0
active_defrag_running:0
lazyfree_pending_objects:0
lazyfreed_objects:0

# Persistence
loading:0
async_loading:0
current_cow_peak:0
current_cow_size:0
current_cow_size_age:0
current_fork_perc:0.00
current_save_keys_processed:0
current_save_keys_total:0
rdb_changes_since_last_save:2
rdb_bgsave_in_progress:0
rdb_last_save_time:1795702502
rdb_last_bgsave_status:ok
rdb_last_bgsave_time_sec:-1
rdb_current_bgsave_time_sec:-1
rdb_saves:0
rdb_last_cow_size:0
rdb_last_load_keys_expired:0
rdb_last_load_keys_loaded:0
aof_enabled:0
aof_rewrite_in_progress:0
aof_rewrite_scheduled:0
aof_last_rewrite_time_sec:-1
aof_current_rewrite_time_sec:-1
aof_last_bgrewrite_status:ok
aof_rewrites:0
aof_rewrites_consecutive_failures:0
aof_last_write_status:ok
aof_last_cow_size:0
module_fork_in_progress:0
module_fork_last_cow_size:0

# Stats
total_connections_received:9
total_commands_processed:8
instantaneous_ops_per_sec:2
total_net_input_bytes:276
total_net_output_bytes:415
total_net_repl_input_bytes:0
total_net_repl_output_bytes:0
instantaneous_input_kbps:0.09
instantaneous_output_kbps:0.01
instantaneous_input_repl_kbps:0.00
instantaneous_output_repl_kbps:0.00
rejected_connections:0
sync_full:0
sync_partial_ok:0
sync_partial_err:0
expired_keys:0
expired_stale_perc:0.00
expired_time_cap_reached_count:0
expire_cycle_cpu_milliseconds:2
evicted_keys:0
evicted_clients:0
total_eviction_exceeded_time:0
current_eviction_exceeded_time:0
keyspace_hits:0
keyspace_misses:0
pubsub_channels:0
pubsub_patterns:0
pubsubshard_channels:0
latest_fork_usec:0
total_forks:0
migrate_cached_sockets:0
slave_expires_tracked_keys:0
active_defrag_hits:0
active_defrag_misses:0
active_defrag_key_hits:0
active_defrag_key_misses:0
total_active_defrag_time:0
current_active_defrag_time:0
tracking_total_keys:0
tracking_total_items:0
tracking_total_prefixes:0
unexpected_error_replies:0
total_error_replies:0
dump_payload_sanitizations:0
total_reads_processed:17
total_writes_processed:8
io_threaded_reads_processed:0
io_threaded_writes_processed:0
reply_buffer_shrinks:0
reply_buffer_expands:0

# Replication
role:master
connected_slaves:0
master_failover_state:no-failover
master_replid:8cba9d681165eab78b6b6b2b5faecc7474688d6b
master_replid2:0000000000000000000000000000000000000000
master_repl_offset:0
second_repl_offset:-1
repl_backlog_active:0
repl_backlog_size:1048576
repl_backlog_first_byte_offset:0
repl_backlog_histlen:0

# CPU
used_cpu_sys:0.084952
used_cpu_user:0.110705
used_cpu_sys_children:0.000000
used_cpu_user_children:0.000000
used_cpu_sys_main_thread:0.084405
used_cpu_user_main_thread:0.111064

# Modules

# Errorstats

# Cluster
cluster_enabled:0

# Keyspace
db0:keys=2,expires=1,avg_ttl=499898
""")

KS_A = _bulk("""\
# Keyspace
db0:keys=2,expires=1,avg_ttl=999948
""")

KS_B = _bulk("""\
# Keyspace
db0:keys=2,expires=1,avg_ttl=499898
""")

ENVOY_ALL = _bulk("""\
# Server
redis_version:7.0.15
redis_git_sha1:00000000
redis_git_dirty:0
redis_build_id:ae4d7c971a948f0
redis_mode:cluster
os:Linux 6.18.44-fc-v782 x86_64
arch_bits:64
monotonic_clock:POSIX clock_gettime
gcc_version:12.2.0
multiplexing_api:epoll
atomicvar_api:c11-builtin
process_supervised:no
run_id:ace34f21f549570b85ed89d35d4e4cb79e420e3f
server_time_usec:1795702586237555
uptime_in_seconds:84
uptime_in_days:0
hz:10
configured_hz:10
lru_clock:540474
executable:/tmp/rp28/redis-server
io_threads_active:0

# Clients
connected_clients:2
cluster_connections:0
maxclients:10000
client_recent_max_input_buffer:0
client_recent_max_output_buffer:0
blocked_clients:0
tracking_clients:0
pubsub_clients:0
watching_clients:0
clients_in_timeout_table:0
total_watched_keys:0
total_blocking_keys:0
total_blocking_keys_on_nokey:0

# Memory
used_memory:2056720
used_memory_human:1.96M
used_memory_rss:14028800
used_memory_rss_human:13.38M
used_memory_peak:1040688
used_memory_peak_human:1016.30K
used_memory_overhead:1753248
used_memory_startup:1752512
used_memory_dataset:303472
total_system_memory:50552127488
total_system_memory_human:47.08G
used_memory_lua:65536
used_memory_vm_eval:65536
used_memory_lua_human:64.00K
used_memory_scripts_eval:0
number_of_cached_scripts:0
number_of_functions:0
number_of_libraries:0
used_memory_vm_functions:67584
used_memory_vm_total:133120
used_memory_vm_total_human:130.00K
used_memory_functions:400
used_memory_scripts:400
used_memory_scripts_human:400B
maxmemory:3000000
maxmemory_human:2.86M
maxmemory_policy:noeviction
mem_fragmentation_bytes:12053280
allocator_frag_bytes:335424
allocator_rss_bytes:5341184
rss_overhead_bytes:4493312
allocator_allocated:3858880
allocator_active:4194304
allocator_resident:9535488
allocator_muzzy:0
mem_not_counted_for_evict:0
mem_clients_slaves:0
mem_clients_normal:0
mem_cluster_links:0
mem_cluster_slot_migration_output_buffer:0
mem_cluster_slot_migration_input_buffer:0
mem_cluster_slot_migration_input_buffer_peak:0
mem_aof_buffer:0
mem_replication_backlog:0
mem_total_replication_buffers:0
mem_allocator:jemalloc-5.3.0
mem_overhead_db_hashtable_rehashing:0
active_defrag_running:0
lazyfree_pending_objects:0
lazyfreed_objects:0

# Stats
total_connections_received:18
total_commands_processed:28
instantaneous_ops_per_sec:3
total_net_input_bytes:870
total_net_output_bytes:11970
total_net_repl_input_bytes:0
total_net_repl_output_bytes:0
instantaneous_input_kbps:0
instantaneous_output_kbps:0
instantaneous_input_repl_kbps:0
instantaneous_output_repl_kbps:0
rejected_connections:0
sync_full:0
sync_partial_ok:0
sync_partial_err:0
expired_subkeys:0
expired_keys:0
expired_stale_perc:0
expired_time_cap_reached_count:0
expire_cycle_cpu_milliseconds:4
evicted_keys:0
evicted_clients:0
evicted_scripts:0
total_eviction_exceeded_time:0
current_eviction_exceeded_time:0
keyspace_hits:0
keyspace_misses:0
pubsub_channels:0
pubsub_patterns:0
pubsubshard_channels:0
latest_fork_usec:0
total_forks:0
migrate_cached_sockets:0
slave_expires_tracked_keys:0
active_defrag_hits:0
active_defrag_misses:0
active_defrag_key_hits:0
active_defrag_key_misses:0
total_active_defrag_time:0
current_active_defrag_time:0
tracking_total_keys:0
tracking_total_items:0
tracking_total_prefixes:0
unexpected_error_replies:0
total_error_replies:0
dump_payload_sanitizations:0
total_reads_processed:40
total_writes_processed:22
io_threaded_reads_processed:0
io_threaded_writes_processed:0
client_query_buffer_limit_disconnections:0
client_output_buffer_limit_disconnections:0
reply_buffer_shrinks:2
reply_buffer_expands:1
eventloop_cycles:0
eventloop_duration_sum:0
eventloop_duration_cmd_sum:0
instantaneous_eventloop_cycles_per_sec:0
instantaneous_eventloop_duration_usec:0
acl_access_denied_auth:0
acl_access_denied_cmd:0
acl_access_denied_key:0
acl_access_denied_channel:0

# CPU
used_cpu_sys:0
used_cpu_user:0
used_cpu_sys_children:0
used_cpu_user_children:0
used_cpu_sys_main_thread:0
used_cpu_user_main_thread:0

# Cluster
cluster_enabled:1

# Keyspace
db0:keys=4,expires=2,avg_ttl=499936
""")

ENVOY_KS = b'$49\r\n# Keyspace\r\ndb0:keys=4,expires=2,avg_ttl=499936\r\n\r\n'


class GoldenTests(SynchronousTestCase):
    """
    Replies recorded from Envoy 1.40.0 with two real redis-server shards.
    """

    def test_fullInfo(self) -> None:
        """
        C{INFO} with no argument: every section in Envoy's order, summed,
        maximised, first-value, recomputed C{*_human} and constant keys.
        """
        self.assertEqual(
            aggregateInfo([SHARD_A, SHARD_B], infoSection([b"INFO"])),
            ENVOY_ALL)

    def test_keyspace(self) -> None:
        """
        C{INFO keyspace}: only the C{db0} line, pairwise-averaged TTL.
        """
        self.assertEqual(
            aggregateInfo([KS_A, KS_B], infoSection([b"INFO", b"keyspace"])),
            ENVOY_KS)

    def test_recordedAll(self) -> None:
        """
        C{INFO all} (recorded) gives an empty bulk string even though the
        shards' replies are full.
        """
        self.assertEqual(
            aggregateInfo([SHARD_A, SHARD_B], infoSection([b"INFO", b"all"])),
            b"$0\r\n\r\n")


class CombineTests(SynchronousTestCase):
    """
    How each key's values from the shards are combined.
    """

    def test_sumMaxFirst(self) -> None:
        """
        Sum keys add up, max keys keep the largest, first-value keys keep the
        first non-empty value in shard order.
        """
        lines = _body(aggregateInfo([
            _shard("# Server", "redis_version:", "uptime_in_seconds:50",
                   "# Clients", "connected_clients:3"),
            _shard("# Server", "redis_version:7.2.4", "uptime_in_seconds:90",
                   "# Clients", "connected_clients:4", "maxclients:10"),
            _shard("# Server", "redis_version:6.0.0", "uptime_in_seconds:70",
                   "# Clients", "maxclients:20"),
        ], None))
        self.assertIn(b"redis_version:7.2.4", lines)
        self.assertIn(b"uptime_in_seconds:90", lines)
        self.assertIn(b"connected_clients:7", lines)
        self.assertIn(b"maxclients:10", lines)

    def test_constantsAndDefaults(self) -> None:
        """
        C{redis_mode} and C{cluster_enabled} are constants; sum and max keys
        no shard reported print as C{0}; first-value keys nobody reported
        and unknown keys are left out.
        """
        lines = _body(aggregateInfo([
            _shard("# Server", "redis_mode:standalone", "made_up_key:1",
                   "# Cluster", "cluster_enabled:0"),
        ], None))
        self.assertIn(b"redis_mode:cluster", lines)
        self.assertIn(b"cluster_enabled:1", lines)
        self.assertIn(b"uptime_in_days:0", lines)
        self.assertIn(b"used_cpu_user_main_thread:0", lines)
        self.assertNotIn(b"made_up_key:1", lines)
        self.assertFalse([line for line in lines
                          if line.startswith(b"redis_version:")])
        self.assertNotIn(b"# Keyspace", lines)

    def test_layout(self) -> None:
        """
        Sections come in template order, each after a blank line, with no
        blank line at the end; keys are found whatever section holds them.
        """
        reply = aggregateInfo([
            _shard("used_cpu_sys:5", "# Server", "used_cpu_user:7"),
        ], None)
        lines = _body(reply)
        self.assertEqual(
            [line for line in lines if line.startswith(b"#")],
            [b"# Server", b"# Clients", b"# Memory", b"# Stats", b"# CPU",
             b"# Cluster"])
        self.assertEqual(lines[-1], b"")
        self.assertEqual(lines[-2], b"cluster_enabled:1")
        self.assertEqual(lines[lines.index(b"# Clients") - 1], b"")
        self.assertIn(b"used_cpu_sys:5", lines)
        self.assertIn(b"used_cpu_user:7", lines)

    def test_integerParsing(self) -> None:
        """
        Numbers parse as strict 64-bit integers: surrounding whitespace and a
        sign are fine, floats and junk count for nothing, sums wrap around,
        and a maximum never goes below 0.
        """
        lines = _body(aggregateInfo([
            _shard("# Clients", "connected_clients: 5", "blocked_clients:+4",
                   "tracking_clients:9223372036854775807",
                   "pubsub_clients:-2", "watching_clients:1.5",
                   "client_recent_max_input_buffer:-8",
                   "# CPU", "used_cpu_sys:0.25"),
            _shard("# Clients", "connected_clients:5 ", "tracking_clients:1",
                   "pubsub_clients:-3", "watching_clients:x"),
        ], b"Clients"))
        self.assertIn(b"connected_clients:10", lines)
        self.assertIn(b"blocked_clients:4", lines)
        self.assertIn(b"tracking_clients:-9223372036854775808", lines)
        self.assertIn(b"pubsub_clients:-5", lines)
        self.assertIn(b"watching_clients:0", lines)
        self.assertIn(b"client_recent_max_input_buffer:0", lines)
        self.assertEqual(
            _body(aggregateInfo([_shard("# CPU", "used_cpu_sys:0.25")],
                                b"cpu"))[1], b"used_cpu_sys:0")


class HumanTests(SynchronousTestCase):
    """
    C{*_human} keys are recomputed from the aggregated byte counts.
    """

    def test_units(self) -> None:
        """
        Below 1024 in bytes, then two decimals with K/M/G/T/P, and plain
        bytes again from 1024P; the shards' own C{*_human} values are
        ignored.
        """
        lines = _body(aggregateInfo([
            _shard("# Memory", "used_memory:1536", "used_memory_human:99G",
                   "used_memory_rss:1023", "used_memory_peak:5000000000",
                   "total_system_memory:1152921504606846976",
                   "used_memory_lua:1152921504606846975",
                   "used_memory_scripts:1048575",
                   "used_memory_vm_total:1125899906842624"),
            _shard("# Memory", "used_memory:1"),
        ], b"memory"))
        self.assertIn(b"used_memory_human:1.50K", lines)
        self.assertIn(b"used_memory_rss_human:1023B", lines)
        self.assertIn(b"used_memory_peak_human:4.66G", lines)
        self.assertIn(
            b"total_system_memory_human:1152921504606846976B", lines)
        self.assertIn(b"used_memory_lua_human:1024.00P", lines)
        self.assertIn(b"used_memory_scripts_human:1024.00K", lines)
        self.assertIn(b"used_memory_vm_total_human:1.00P", lines)
        self.assertEqual(
            lines[lines.index(b"used_memory:1537") + 1],
            b"used_memory_human:1.50K")

    def test_omittedWhenNotPositive(self) -> None:
        """
        A C{*_human} key is left out when its source is 0 or negative.
        """
        lines = _body(aggregateInfo([
            _shard("# Memory", "maxmemory:-5", "used_memory:0"),
        ], b"memory"))
        self.assertIn(b"maxmemory:-5", lines)
        self.assertFalse([line for line in lines if b"_human:" in line])


class KeyspaceTests(SynchronousTestCase):
    """
    The C{db0} keyspace line.
    """

    def _db0(self, *values: str) -> bytes:
        """
        The C{db0} line aggregated from one shard per value in C{values}.
        """
        return _body(aggregateInfo(
            [_shard("# Keyspace", "db0:" + value) for value in values],
            b"keyspace"))[1]

    def test_pairwiseAverage(self) -> None:
        """
        Keys and expires add up; C{avg_ttl} is averaged with the running
        value as each shard is merged, starting from 0.
        """
        self.assertEqual(
            self._db0("keys=10,expires=2,avg_ttl=100",
                      "keys=1,expires=1,avg_ttl=51"),
            b"db0:keys=11,expires=3,avg_ttl=50")
        self.assertEqual(
            self._db0("keys=1,expires=0,avg_ttl=80",
                      "keys=1,expires=0,avg_ttl=40",
                      "keys=1,expires=0,avg_ttl=20"),
            b"db0:keys=3,expires=0,avg_ttl=30")

    def test_lenientCounts(self) -> None:
        """
        Counts keep their leading digits, negatives are 0, overflows
        saturate, and the unsigned sums wrap around.
        """
        self.assertEqual(
            self._db0("keys=12abc,expires=-1,avg_ttl=99999999999999999999",
                      "keys=3,expires=2,avg_ttl=7,subexpiry=0"),
            b"db0:keys=15,expires=2,avg_ttl=4611686018427387907")
        self.assertEqual(
            self._db0("keys=18446744073709551615,expires= 4 ", "keys=3"),
            b"db0:keys=2,expires=4,avg_ttl=0")

    def test_otherDatabases(self) -> None:
        """
        Only C{db0} is reported; without it there is no Keyspace section.
        """
        self.assertEqual(
            aggregateInfo([_shard("# Keyspace", "db1:keys=5")], b"keyspace"),
            b"$0\r\n\r\n")


class SectionTests(SynchronousTestCase):
    """
    C{INFO <section>} filtering.
    """

    def test_infoSection(self) -> None:
        """
        The filter is the lower-cased first argument; none (or an empty
        one) means every section.
        """
        self.assertIsNone(infoSection([b"INFO"]))
        self.assertIsNone(infoSection([b"info", b""]))
        self.assertEqual(infoSection([b"INFO", b"KeySpace", b"cpu"]),
                         b"keyspace")
        self.assertEqual(infoSection([b"info", b"ALL"]), b"all")

    def test_caseInsensitive(self) -> None:
        """
        The section is matched ignoring case, both in the shards' headers
        and in the output (recorded: C{INFO cluster}).
        """
        replies = [_shard("#cluster", "cluster_enabled:0")]
        expected = b"$30\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n"
        self.assertEqual(
            aggregateInfo(replies, infoSection([b"INFO", b"CLUSTER"])),
            expected)
        self.assertEqual(aggregateInfo(replies, "Cluster"), expected)

    def test_onlyLinesOfTheSection(self) -> None:
        """
        With a filter, lines outside the matching section of a shard's reply
        (including lines before any header) are ignored.
        """
        lines = _body(aggregateInfo([
            _shard("used_cpu_sys:5", "# Server", "used_cpu_user:7", "# cpu",
                   "used_cpu_sys_children:2"),
        ], b"cpu"))
        self.assertEqual(lines, [
            b"# CPU", b"used_cpu_sys:0", b"used_cpu_user:0",
            b"used_cpu_sys_children:2", b"used_cpu_user_children:0",
            b"used_cpu_sys_main_thread:0", b"used_cpu_user_main_thread:0",
            b""])

    def test_unknownSection(self) -> None:
        """
        C{all}, C{everything}, C{default} or a section Envoy does not know
        give an empty bulk string.
        """
        replies = [_shard("# Persistence", "loading:0", "# Server",
                          "redis_version:7.0.0")]
        for name in [b"all", b"everything", b"default", b"persistence"]:
            self.assertEqual(
                aggregateInfo(replies, infoSection([b"INFO", name])),
                b"$0\r\n\r\n")


class ReplyTypeTests(SynchronousTestCase):
    """
    Shard replies that are errors or not text.
    """

    good = _shard("# Cluster")

    def test_firstError(self) -> None:
        """
        The first error in shard order is relayed, even when an earlier
        shard's reply has the wrong type; a blob error becomes a simple one.
        """
        self.assertEqual(
            aggregateInfo([self.good, b"-ERR one\r\n", b"-ERR two\r\n"], None),
            b"-ERR one\r\n")
        self.assertEqual(
            aggregateInfo([b":5\r\n", b"-ERR second\r\n"], None),
            b"-ERR second\r\n")
        self.assertEqual(
            aggregateInfo([self.good, b"!9\r\nERR blobx\r\n"], None),
            b"-ERR blobx\r\n")

    def test_unexpectedType(self) -> None:
        """
        Integers, simple strings, arrays, RESP3 nulls and null bulk strings
        are rejected with Envoy's error.
        """
        self.assertEqual(
            UNEXPECTED_REPLY,
            b"-unexpected response type received from shard\r\n")
        for bad in [b":5\r\n", b"+OK\r\n", b"*0\r\n", b"$-1\r\n", b"_\r\n"]:
            self.assertEqual(aggregateInfo([self.good, bad], None),
                             UNEXPECTED_REPLY)
            self.assertEqual(aggregateInfo([bad, self.good], b"cluster"),
                             UNEXPECTED_REPLY)

    def test_verbatimString(self) -> None:
        """
        A RESP3 verbatim string is accepted, its C{txt:} prefix dropped.
        """
        text = b"txt:# Clients\r\nconnected_clients:4\r\n"
        verbatim = b"=%d\r\n%s\r\n" % (len(text), text)
        lines = _body(aggregateInfo(
            [_shard("# Clients", "connected_clients:3"), verbatim],
            b"clients"))
        self.assertEqual(lines[:2], [b"# Clients", b"connected_clients:7"])
