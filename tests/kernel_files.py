"""Contents of cgroup files as kernels write them, for tests that need no cgroup.

The v1 texts and the hybrid host's unified cpu.stat and *.pressure were read from a leaf
on Linux 6.18 (Debian 12 VM, hybrid); the pure v2 texts follow
Documentation/admin-guide/cgroup-v2.rst with values of a busy leaf, including the
keys that share a prefix with the ones cgman reads (anon/anon_thp, file/file_mapped,
oom_kill/oom_group_kill).
"""

V1 = {
    "cpuacct.usage": "9579106662323\n",
    "cpuacct.stat": "user 770182\nsystem 187728\n",
    "cpu.stat": "nr_periods 120\nnr_throttled 7\nthrottled_time 35000123\nnr_bursts 0\nburst_time 0\n",
    "memory.usage_in_bytes": "200704\n",
    "memory.max_usage_in_bytes": "262144\n",
    "memory.stat": ("cache 0\nrss 110592\nrss_huge 0\nshmem 0\nmapped_file 0\ndirty 0\nwriteback 0\n"
                    "swap 0\npgpgin 27\npgpgout 0\npgfault 76\npgmajfault 0\ninactive_anon 106496\n"
                    "active_anon 4096\ninactive_file 4096\nactive_file 0\nunevictable 0\n"
                    "hierarchical_memory_limit 9223372036854771712\n"
                    "hierarchical_memsw_limit 9223372036854771712\ntotal_cache 8192\ntotal_rss 110592\n"
                    "total_rss_huge 0\ntotal_shmem 0\ntotal_mapped_file 0\ntotal_inactive_anon 106496\n"
                    "total_active_anon 4096\ntotal_inactive_file 8192\ntotal_active_file 0\n"
                    "total_unevictable 0\n"),
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "blkio.throttle.io_service_bytes_recursive": ("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 12288\n8:0 Async 0\n"
                                                  "8:0 Discard 0\n8:0 Total 12288\n254:0 Read 100\n"
                                                  "254:0 Write 0\n254:0 Total 100\nTotal 12388\n"),
    "blkio.throttle.io_serviced_recursive": "8:0 Read 3\n8:0 Write 2\n8:0 Total 5\n254:0 Read 1\nTotal 6\n",
    "pids.current": "2\n",
    "freezer.state": "FREEZING\n",
}

V2 = {
    "cpu.stat": ("usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\ncore_sched.force_idle_usec 0\n"
                 "nr_periods 120\nnr_throttled 7\nthrottled_usec 35000\nnr_bursts 0\nburst_usec 0\n"),
    "memory.current": "5459968\n",
    "memory.peak": "6291456\n",
    "memory.stat": ("anon 1052672\nfile 4096000\nkernel 311296\nkernel_stack 16384\npagetables 45056\n"
                    "sock 0\nvmalloc 0\nshmem 0\nfile_mapped 1228800\nfile_dirty 0\nfile_writeback 0\n"
                    "swapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\ninactive_anon 1048576\n"
                    "active_anon 4096\ninactive_file 2048000\nactive_file 2048000\nunevictable 0\n"
                    "slab_reclaimable 118784\nslab_unreclaimable 86016\nslab 204800\npgfault 1234\n"),
    "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
    "io.stat": ("254:0 rbytes=2101248 wbytes=4096 rios=40 wios=1 dbytes=0 dios=0\n"
                "8:0 rbytes=1000 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"),
    "pids.current": "3\n",
    "cgroup.events": "populated 1\nfrozen 0\n",
    "cpu.pressure": ("some avg10=0.00 avg60=0.00 avg300=0.00 total=3273\n"
                     "full avg10=0.00 avg60=0.00 avg300=0.00 total=3249\n"),
    "memory.pressure": ("some avg10=1.50 avg60=0.20 avg300=0.00 total=81234\n"
                        "full avg10=0.50 avg60=0.10 avg300=0.00 total=40000\n"),
    "io.pressure": ("some avg10=0.00 avg60=0.00 avg300=0.00 total=17\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"),
}

# The unified cpu.stat of a hybrid host (no cpu controller there: no throttling keys).
HYBRID_UNIFIED = {"cpu.stat": "usage_usec 968\nuser_usec 968\nsystem_usec 0\nnice_usec 0\n",
                  "cpu.pressure": V2["cpu.pressure"], "memory.pressure": V2["memory.pressure"],
                  "io.pressure": V2["io.pressure"], "cgroup.events": "populated 1\nfrozen 1\n"}

# cpu.pressure before Linux 5.13 has no "full" line.
CPU_PRESSURE_BEFORE_5_13 = "some avg10=0.00 avg60=0.00 avg300=0.00 total=3273\n"
