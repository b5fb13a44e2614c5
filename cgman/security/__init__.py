"""What a container may do: capabilities, no_new_privs, seccomp, devices, masked paths, its init.

- ``caps``: capability names and the default set (Podman's eleven).
- ``seccomp``: profiles in the Docker/OCI JSON format, filtered for a container and
  compiled (C, libseccomp) into a cached BPF program.
- ``devices``: the device allow list (v1 ``devices.*`` lines, the v2 BPF filter's rules).
- ``resolve``: a group's launch policy plus a run's flags -> one ``Security`` value,
  refusing what the operator did not allow.
- ``init``: cgman-init in a sealed memfd, the container's PID 1.

Pure except ``seccomp.program`` (reads profiles, writes the cache) and ``init.memfd``.
"""
