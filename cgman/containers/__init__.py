"""Containers: launch in new namespaces placed race-free in their cgroup (launch, process), the root
filesystem and the protections applied in the child, networking, the spec from a group's policy
(spec), run and exec (lifecycle), ps, stop, rm and gc (manage), collecting one that ended (collect)."""
