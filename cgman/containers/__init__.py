"""Containers: launch in new namespaces placed race-free in their cgroup, the root filesystem
and the protections applied in the child, networking, and the lifecycle (run, exec, ps, stop, rm, gc)."""
