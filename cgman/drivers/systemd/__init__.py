"""The systemd cgroup driver (opt-in: `--cgroup-driver systemd`), as runc's, crun's and kubelet's:
policy groups become slices and containers transient scopes, created over D-Bus with the policy's
limits as unit properties, so `systemctl status`, `systemd-cgtop` and `daemon-reload` agree with cgman.

`units` translates (pure), `bus` talks to systemd (jeepney, the only D-Bus import), `reconcile`
applies a policy set as a reconcile: properties that differ from systemd's are set, nothing else.
"""
