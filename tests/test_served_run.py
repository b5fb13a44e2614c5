"""`cgman run` served by the agent (the C front cgman/_client.c, cli/served.py) and launched directly: the same
behaviour through both paths (exit codes, signals, stdio and a terminal, -d, --rm, --timeout,
errors, the ledger exactly once), containers that outlive an agent SIGKILL, and a socket that
only root can use and that survives hostile and vanishing clients."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import REPO, cli_env
from .test_agent import Agent, old, proc_state, until

pytestmark = pytest.mark.kernel
PY = sys.executable
FRONT = Path(PY).parent / "cgman"        # the installed command: the C front (cgman/_client.c)
POLICY = """\
version: 1
policies:
  acme:
    tenant: acme
    children:
      web:
        container:
          memory: {max: 128Mi}
          pids: {max: 64}
        launch:
          network: {mode: loopback}
          volumes: [{path: /tmp}]
"""


class Cgman:
    """The installed `cgman` for one root, served (an agent runs) or direct (none runs)."""

    def __init__(self, root: str, tmp: Path, path: str, run_dir: Path | None = None) -> None:
        self.root, self.tmp, self.path = root, tmp, path
        self.run = run_dir or tmp / "run"
        self.env = dict(cli_env(root, tmp), CGMAN_RUN_DIR=str(self.run))
        self.agent: Agent | None = None
        self.agents: list[Agent] = []          # every agent started here, the SIGKILLed included
        self.sock = self.run / f"agent-{root}.sock"

    def start_agent(self, stop_at: str | None = None) -> Agent:
        pdir = self.tmp / "policies"
        pdir.mkdir(exist_ok=True)
        old(pdir / "acme.yaml", POLICY)
        self.agent = Agent(self.root, self.tmp, pdir, env={"CGMAN_RUN_DIR": str(self.run)},
                           stop_at=stop_at)
        self.agents.append(self.agent)
        until(lambda: self.sock.exists() and "applied 1 file" in self.agent.text(), 30, "the agent to serve")
        return self.agent

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(FRONT), *args], input=stdin, capture_output=True, text=True,
                              env=self.env, cwd=REPO, timeout=timeout)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([str(FRONT), *args], env=self.env, cwd=REPO, text=True, **kw)

    def rows(self) -> list[tuple[str, str, int | None]]:
        db = sqlite3.connect(f"file:{self.tmp / 'state' / 'ledger.db'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT id, name, exit_code FROM containers ORDER BY name").fetchall()
        finally:
            db.close()

    def record(self, name: str) -> dict:
        return json.loads((self.tmp / "run" / "containers" / name / "record.json").read_text())

    def close(self) -> None:
        """Every agent started here ends (by PID, with its run server), then every container left
        is removed: an agent left running would make its groups again under a removed root."""
        for a in self.agents:
            a.stop(signal.SIGKILL)
            _kill_supervisors_of(a)
        for name in sorted((self.run / "containers").glob("*")):
            self("rm", "--force", name.name)


@pytest.fixture
def cgman_for(host, tmp_path):
    """Cgman(...) for this test's root; each one closed at teardown, also when the test fails."""
    made: list[Cgman] = []

    def make(path: str = "agent", run_dir: Path | None = None) -> Cgman:
        made.append(Cgman(host.root, tmp_path, path, run_dir=run_dir))
        return made[-1]
    try:
        yield make
    finally:
        for c in made:
            c.close()


@pytest.fixture(params=["direct", "agent"])
def cg(request, cgman_for, tmp_path):
    c = cgman_for(request.param)
    if request.param == "agent":
        c.start_agent()
    else:
        (tmp_path / "p.yaml").write_text(POLICY)
        assert c("apply", str(tmp_path / "p.yaml")).returncode == 0
    p = c("-v", "run", "-p", "acme/web", "--rm", "--", "true")
    assert p.returncode == 0, p.stderr
    served = "served by the agent" in p.stderr
    assert served == (request.param == "agent"), p.stderr.splitlines()[:2]   # -v says which path ran
    yield c


def _kill_supervisors_of(agent: Agent) -> None:
    """The run server exits with its agent; make sure it did, and end a supervisor a test stopped
    at its request (stop_at), which would wait forever (by PID, never by name)."""
    for line in agent.text().splitlines():
        m = re.search(r"run server pid (\d+)|stopping at request \(pid (\d+)\)", line)
        pid = int(m.group(1) or m.group(2)) if m else 0
        if pid and proc_state(pid) not in ("gone", "Z"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:       # it ended between the look and the kill
                pass


# ------------------------------------------------------------------ the same through both paths
@pytest.mark.cgroup2          # also in the v2 VM stage: both paths on a pure cgroup v2 kernel
def test_exit_codes_and_output(cg, tmp_path):
    p = cg("run", "-p", "acme/web", "--rm", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")
    for code in (124, 125, 126, 127):
        assert cg("run", "-p", "acme/web", "--rm", "--", "sh", "-c", f"exit {code}").returncode == code
    assert cg("run", "-p", "acme/web", "--rm", "--", "sh", "-c", "kill -USR1 $$").returncode == 128 + 10
    p = cg("run", "-p", "acme/web", "--rm", "--", "/nonexistent/cmd")
    assert p.returncode == 127 and p.stderr.count("\n") == 1 and p.stderr.startswith("cgman: error:"), p.stderr
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    assert cg("run", "-p", "acme/web", "--rm", "--", str(script)).returncode == 126
    assert cg("run", "-p", "acme/web", "--rm", "--", "cat", stdin="from stdin\n").stdout == "from stdin\n"


@pytest.mark.cgroup2          # also in the v2 VM stage: both paths on a pure cgroup v2 kernel
def test_a_terminal_stays_the_containers_terminal(cg):
    master, slave = pty.openpty()
    try:
        p = cg.popen("run", "-p", "acme/web", "--rm", "--", "sh", "-c",
                     "test -t 0 && test -t 1 && test -t 2 && echo all-ttys", stdin=slave, stdout=slave,
                     stderr=slave)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:          # EIO: every slave fd is closed
                break
            if not chunk:
                break
            out += chunk
        assert p.wait(60) == 0, out
        assert b"all-ttys" in out
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2])
def test_signals_reach_the_workload(cg, tmp_path, sig):
    ready = tmp_path / f"ready-{sig}"
    p = cg.popen("run", "-p", "acme/web", "--name", f"sig{int(sig)}", "--", "sh", "-c",
                 f"trap 'echo got-it; exit 42' {sig.name[3:]}; touch {ready}; while :; do sleep 0.05; done",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(lambda: ready.exists() or p.poll() is not None, 30, "the workload")
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, out) == (42, "got-it\n"), err
    assert cg.record(f"sig{int(sig)}")["exit_code"] == 42


@pytest.mark.cgroup2          # also in the v2 VM stage: both paths on a pure cgroup v2 kernel
def test_detach_rm_timeout_and_the_ledger_exactly_once(cg, host):
    p = cg("run", "-p", "acme/web", "-d", "--name", "bg", "--", "sleep", "60")
    assert (p.returncode, p.stdout) == (0, "bg\n"), p.stderr
    assert cg.record("bg")["state"] == "running"
    assert cg("stop", "bg").returncode == 0
    assert cg("run", "-p", "acme/web", "--rm", "--name", "gone", "--", "true").returncode == 0
    assert not (cg.tmp / "run" / "containers" / "gone").exists()
    t = time.monotonic()
    p = cg("run", "-p", "acme/web", "--name", "slow", "--timeout", "300ms", "--", "sleep", "30")
    assert p.returncode == 124 and "timed out after 300ms" in p.stderr, p.stderr
    assert time.monotonic() - t < 20
    names = [r[1] for r in cg.rows()]
    assert [n for n in names if n in ("bg", "gone", "slow")] == ["bg", "gone", "slow"], names
    assert len({r[0] for r in cg.rows()}) == len(names)


def test_a_name_held_by_a_dead_supervisors_container_is_freed_by_the_next_run(cg):
    """The direct path collects every dead supervisor's container first; a served run leaves
    that to the agent's interval, but frees the name it asks for at once."""
    p = cg("run", "-p", "acme/web", "-d", "--rm", "--name", "orphan", "--", "sleep", "60")
    assert p.returncode == 0, p.stderr
    rec = cg.record("orphan")
    os.kill(rec["supervisor_pid"], signal.SIGKILL)
    until(lambda: proc_state(rec["supervisor_pid"]) in ("gone", "Z"), 10, "the supervisor to die")
    p = cg("run", "-p", "acme/web", "--rm", "--name", "orphan", "--", "true")
    assert p.returncode == 0 and "collected container orphan" in p.stderr, p.stderr
    assert [r[1] for r in cg.rows()].count("orphan") == 2          # each billed once


@pytest.mark.parametrize("args", [
    ["run", "-p", "acme/none", "--", "true"],                 # unknown group: one line, exit 1
    ["run", "-p", "acme/web"],                                 # no command
    ["run", "-p", "acme/web", "--memory", "lots", "--", "true"],   # typer's usage error
    ["run", "-p", "acme/web", "--cpus", "-1", "--", "true"],
    ["run", "-p", "acme/web", "--bogus", "--", "true"],
    ["run", "--help"],
])
def test_errors_read_the_same_through_both_paths(host, tmp_path, args, cgman_for):
    c = cgman_for("agent")
    c.start_agent()
    served = c(*args)
    c.sock.rename(c.sock.with_suffix(".off"))          # no agent to find: the direct path
    try:
        direct = c(*args)
    finally:
        c.sock.with_suffix(".off").rename(c.sock)
    assert (served.returncode, served.stdout, served.stderr) == \
           (direct.returncode, direct.stdout, direct.stderr)
    assert served.returncode != 0 or args[-1] == "--help"


# ------------------------------------------------------------------ containers outlive the agent
def test_containers_outlive_an_agent_sigkill_and_are_billed_once(host, tmp_path, cgman_for):
    c = cgman_for("agent")
    agent = c.start_agent()
    names = [f"c{i:02d}" for i in range(20)]
    for n in names:
        p = c("-v", "run", "-p", "acme/web", "-d", "--name", n, "--", "sleep", "600")
        assert p.returncode == 0 and "served by the agent" in p.stderr, p.stderr
    fg = c.popen("run", "-p", "acme/web", "--name", "fg", "--", "sh", "-c", "sleep 3; exit 5",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    until(lambda: (tmp_path / "run" / "containers" / "fg").exists(), 30, "the foreground run")
    recs = {n: c.record(n) for n in names}
    ino = c.sock.stat().st_ino
    agent.stop(signal.SIGKILL)
    time.sleep(1.0)
    assert all(proc_state(r["pid"]) not in ("gone", "Z") for r in recs.values()), "a container died"
    assert fg.wait(60) == 5, fg.communicate()                # its client still gets the status
    c.start_agent()
    assert c.sock.stat().st_ino != ino                       # the socket was bound again
    ps = json.loads(c("ps", "--json").stdout)
    assert {r["name"] for r in ps if r["state"] == "running"} >= set(names)
    p = c("-v", "run", "-p", "acme/web", "--rm", "--", "true")
    assert p.returncode == 0 and "served by the agent" in p.stderr
    for n in names:
        assert c("stop", n).returncode == 0
    rows = [r for r in c.rows() if r[1] in names or r[1] == "fg"]
    assert sorted(r[1] for r in rows) == sorted(names + ["fg"]), rows     # each exactly once
    assert c("rm", names[0]).returncode == 0


def test_an_agent_that_dies_mid_request_is_a_clear_error_and_leaves_nothing(host, tmp_path, cgman_for):
    c = cgman_for("agent")
    agent = c.start_agent(stop_at="served:request")
    p = c.popen("run", "-p", "acme/web", "--name", "halfway", "--", "true", stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
    try:
        m = until(lambda: re.search(r"stopping at request \(pid (\d+)\)", agent.text()), 30, "the stop point")
        child = int(m.group(1))  # type: ignore[union-attr]
        agent.stop(signal.SIGKILL)
        os.kill(child, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert "closed the connection before it started the run; nothing was started" in err
    assert not (tmp_path / "run" / "containers" / "halfway").exists()
    assert not [d for d in host.drivers for t in d.hierarchies()
                if os.path.exists(os.path.join(t.mount, host.root, "acme/web/halfway"))]


def test_hostile_and_vanishing_clients_leave_nothing_and_block_no_one(host, tmp_path, cgman_for):
    c = cgman_for("agent")
    agent = c.start_agent()
    fds = struct.pack("3i", 0, 1, 2)
    requests = [
        (b"CGMR\x01\0\0\0\0\0\0\x10", 3),                   # announces 16 bytes, then hangs up
        (b"XXXX\x01\0\0\0\0\0\0\0", 3),                     # a foreign magic
        (b"CGMR\x01\0\0\0\xff\xff\xff\xff", 3),             # 4 GiB: declined
        (b"CGMR\x01\0\0\0\0\0\0\x04\0\0\0\x09", 3),         # a list longer than the request
        (b"CGMR\x01\0\0\0\0\0\0\0", 1),                     # one fd instead of three
    ]
    for data, nfds in requests:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(c.sock))
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds[:4 * nfds])])
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            reply = s.recv(5)
            assert reply in (b"", b"D\0\0\0\x02"), reply
    slow = socket.socket(socket.AF_UNIX)                       # says nothing at all
    slow.connect(str(c.sock))
    p = c("run", "-p", "acme/web", "--rm", "--", "sh", "-c", "exit 9")
    assert p.returncode == 9, p.stderr                         # the silent client blocks no one
    slow.close()
    assert not list((tmp_path / "run" / "containers").glob("*"))
    assert "Traceback" not in agent.text()


def test_a_served_run_reads_a_repeated_variable_as_the_direct_path_does(host, tmp_path, cgman_for):
    """An environment may hold a key twice; getenv(3), python and so the direct path read the
    first. So does the served run: the front names the agent's socket by the first
    CGMAN_RUN_DIR, and the supervisor, which checks the run's dirs against the agent's, must not
    read the second and decline. The environment is passed raw (execve), duplicates kept."""
    c = cgman_for("agent")
    c.start_agent()
    execve = ("import ctypes, os, sys\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "args = [a.encode() for a in sys.argv[1:]]\n"
              "env = [e.encode() for e in os.environ['RAW_ENV'].split('\\n')]\n"
              "libc.execve(args[0], (ctypes.c_char_p * (len(args) + 1))(*args, None),\n"
              "            (ctypes.c_char_p * (len(env) + 1))(*env, None))\n"
              "sys.exit(f'execve: {os.strerror(ctypes.get_errno())}')\n")
    raw = [f"{k}={v}" for k, v in c.env.items()] + [f"CGMAN_RUN_DIR={tmp_path / 'elsewhere'}"]
    p = subprocess.run([PY, "-c", execve, str(FRONT), "-v", "run", "-p", "acme/web", "--rm", "--", "true"],
                       env={"RAW_ENV": "\n".join(raw)}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "served by the agent" in p.stderr, p.stderr


def test_a_request_beyond_a_bound_is_declined_and_launched_directly(host, tmp_path, cgman_for):
    """70,000 arguments (more strings than a request may hold, well within exec's limits): the
    agent declines and the client launches by itself, as the direct path runs any line."""
    c = cgman_for("agent")
    c.start_agent()
    p = c("-v", "run", "-p", "acme/web", "--rm", "--", "sh", "-c", 'echo "$#"', "sh", *["x"] * 70_000)
    assert "declined: the request is larger than it takes" in p.stderr, p.stderr[-500:]
    assert (p.returncode, p.stdout) == (0, "70000\n"), p.stderr[-500:]


def test_a_client_killed_mid_run_takes_its_container_along_billed_once(cg, tmp_path):
    p = cg.popen("run", "-p", "acme/web", "--name", "orphan", "--", "sleep", "600", stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    try:
        # record.json appears by rename after its directory: wait for the file, not the directory
        until(lambda: (tmp_path / "run" / "containers" / "orphan" / "record.json").exists() and
              cg.record("orphan").get("pid"), 30, "the container")
        pid = cg.record("orphan")["pid"]
        p.kill()
        p.wait()
        until(lambda: proc_state(pid) in ("gone", "Z"), 30, "the container to stop")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert cg("gc").returncode == 0
    until(lambda: cg.record("orphan")["state"] == "exited", 30, "the record")
    assert [r[1] for r in cg.rows()].count("orphan") == 1


def _children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.append(int(d))
    return out


def _run_server(agent: Agent) -> int:
    m = until(lambda: re.search(r"run server pid (\d+)", agent.text()), 30, "the run server's pid")
    return int(m.group(1))  # type: ignore[union-attr]


def _private_dirty_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise AssertionError("no Private_Dirty")


def test_a_spare_supervisor_forked_ahead_serves_the_run_and_the_next_copies_what_it_wrote(host, tmp_path, cgman_for):
    """The run server keeps one supervisor forked ahead of the next request (no fork on the
    client's path): it is the run's supervisor. Its run reports the pages it wrote, and the
    spare after it copies them while it waits (warmpages.py). The spare goes with the server."""
    c = cgman_for("agent")
    agent = c.start_agent()
    server = _run_server(agent)
    [first] = until(lambda: _children_of(server), 30, "the first spare")   # type: ignore[misc]
    first_dirty = _private_dirty_kib(first)
    p = c("-v", "run", "-p", "acme/web", "--rm", "--", "sh", "-c", "exit 4")
    assert p.returncode == 4 and f"its supervisor of this run is pid {first})" in p.stderr, p.stderr
    until(lambda: proc_state(first) == "gone", 30, "the first supervisor to end")
    [second] = until(lambda: _children_of(server), 30, "the next spare")   # type: ignore[misc]
    assert second != first
    p = c("-v", "run", "-p", "acme/web", "--rm", "--", "true")         # its run: learned from the first
    assert p.returncode == 0 and f"its supervisor of this run is pid {second})" in p.stderr, p.stderr
    [third] = until(lambda: [x for x in _children_of(server) if x != second], 30, "the third spare")
    # It copied what the first run wrote (a few MiB; the first spare had nothing to copy).
    until(lambda: _private_dirty_kib(third) > first_dirty + 1024, 30, "the spare to copy the pages")
    os.kill(server, signal.SIGKILL)              # a server that dies takes its spare along
    until(lambda: proc_state(third) in ("gone", "Z"), 30, "the spare to go with its server")


def test_a_spare_opens_the_ledger_ahead_and_a_ledger_moved_aside_meanwhile_gets_no_row(host, tmp_path, cgman_for):
    """The spare opens the ledger while it waits (its run's commit then skips the open). An
    operator who moves the ledger aside meanwhile (a corrupt one: README, the ledger) gets the
    row in the new ledger at the path, not in the file the spare's connection still holds."""
    c = cgman_for("agent")
    agent = c.start_agent()
    ledger = tmp_path / "state" / "ledger.db"
    server = _run_server(agent)
    def holds(pid: int) -> bool:
        return any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == str(ledger) for fd in os.listdir(f"/proc/{pid}/fd"))
    [spare] = until(lambda: _children_of(server), 30, "the spare")   # type: ignore[misc]
    until(lambda: holds(spare), 30, "the spare to open the ledger")
    aside = tmp_path / "aside"
    aside.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{ledger}{suffix}"):
            os.rename(f"{ledger}{suffix}", aside / f"ledger.db{suffix}")
    p = c("-v", "run", "-p", "acme/web", "--name", "moved", "--rm", "--", "true")
    assert p.returncode == 0 and f"its supervisor of this run is pid {spare})" in p.stderr, p.stderr
    assert [r[1] for r in c.rows()] == ["moved"]
    db = sqlite3.connect(f"file:{aside / 'ledger.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM containers WHERE name = 'moved'").fetchone()[0] == 0
    finally:
        db.close()
    # A run that outlives its first memory sample closes the early connection then: a long run
    # does not keep the ledger open (pinned, if it is moved aside) with the checks of its start.
    [spare2] = until(lambda: [x for x in _children_of(server) if x != spare], 30,  # type: ignore[misc]
                     "the next spare")
    until(lambda: holds(spare2), 30, "the next spare to open the ledger")
    c.env["CGMAN_SAMPLE_INTERVAL"] = "0.2"
    p2 = c.popen("run", "-p", "acme/web", "--name", "long", "--rm", "--", "sleep", "3",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    until(lambda: not holds(spare2), 10, "the long run's supervisor to close the early connection")
    assert p2.poll() is None                                   # while the run still runs
    assert p2.wait(60) == 0 and sorted(r[1] for r in c.rows()) == ["long", "moved"]


def test_a_spare_that_dies_waiting_is_reaped_and_replaced_after_a_pause(host, tmp_path, cgman_for):
    """A spare that dies before its request (killed here; a broken one would die at once) is
    reaped, not left a zombie, and the next is forked only after SPARE_BACKOFF_S, so a spare
    that cannot live does not make the server fork in a loop; runs are served meanwhile."""
    from cgman.cli.served import SPARE_BACKOFF_S
    c = cgman_for("agent")
    agent = c.start_agent()
    server = _run_server(agent)
    [spare] = until(lambda: _children_of(server), 30, "the spare")   # type: ignore[misc]
    os.kill(spare, signal.SIGKILL)
    killed = time.monotonic()
    until(lambda: proc_state(spare) == "gone", 10, "the dead spare to be reaped")
    p = c("-v", "run", "-p", "acme/web", "--rm", "--", "sh", "-c", "exit 3")  # no spare: forked for it
    assert p.returncode == 3, p.stderr
    m = re.search(r"its supervisor of this run is pid (\d+)", p.stderr)
    assert m, p.stderr
    until(lambda: proc_state(int(m.group(1))) == "gone", 30, "the run's supervisor to end")  # not the spare
    [after] = until(lambda: [x for x in _children_of(server) if x != spare], 30, "the next spare")
    assert time.monotonic() - killed >= SPARE_BACKOFF_S * 0.9
    assert proc_state(after) not in ("gone", "Z")


def test_a_spare_that_took_a_run_as_the_agent_stops_runs_it_to_the_end(host, tmp_path, cgman_for):
    """The agent stops while the spare has just taken a request, and the server sees both at
    once: the spare is the run's supervisor now and must run on (the run's client gets its
    status), not be ended with the idle spare it was a moment before."""
    c = cgman_for("agent")
    agent = c.start_agent()
    server = _run_server(agent)
    until(lambda: _children_of(server), 30, "the spare")
    os.kill(server, signal.SIGSTOP)                  # it will see the taken run and the stop together
    p = c.popen("-v", "run", "-p", "acme/web", "--rm", "--", "sh", "-c", "sleep 1; exit 6",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(lambda: (tmp_path / "run" / "containers").exists() and
              list((tmp_path / "run" / "containers").glob("*/record.json")), 30, "the run to start")
        os.kill(agent.p.pid, signal.SIGTERM)         # the agent closes its pipe, then waits for the server
        time.sleep(0.3)
        os.kill(server, signal.SIGCONT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 6 and "served by the agent" in err, err
        until(lambda: "supervisor(s) keep their containers" in agent.text(), 30, "the server to stop")
        assert "1 supervisor(s) keep their containers" in agent.text()
    finally:
        if proc_state(server) == "T":
            os.kill(server, signal.SIGCONT)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_only_root_can_use_the_socket(host, tmp_path, cgman_for):
    run_dir = Path(tempfile.mkdtemp(prefix="cgman-test-run-"))     # traversable by nobody, unlike tmp_path
    run_dir.chmod(0o711)
    c = cgman_for("agent", run_dir=run_dir)
    agent = c.start_agent()
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c"]
    probe = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(c.sock)!r})\n"
             f"s.settimeout(10)\nprint('reply', s.recv(5))")
    try:
        assert oct(c.sock.stat().st_mode & 0o777) == "0o600"
        p = subprocess.run(nobody + [probe], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "PermissionError" in p.stderr, (p.stdout, p.stderr)
        # Past the file mode (opened on purpose here), the agent checks the peer's uid itself.
        os.chmod(c.sock, 0o666)
        try:
            p = subprocess.run(nobody + [probe], capture_output=True, text=True, timeout=60)
        finally:
            os.chmod(c.sock, 0o600)
        assert p.stdout.strip() == "reply b''", (p.stdout, p.stderr)
        until(lambda: "refused a run from uid 65534" in agent.text(), 10, "the refusal logged")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------ the C front's view of the line
def _close_fds(ancillary: list) -> None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for fd in struct.unpack(f"{len(payload) // 4}i", payload):
                os.close(fd)


class FakeAgent:
    """A test process in the agent's place: it binds the socket ``path``, takes one request and
    answers ACCEPTED 1, EXITED 7."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(60)

    def serve(self) -> tuple[list[bytes], list[bytes], bytes, str, str]:
        """(argv, environment, cwd) of the one request, the client's executable and memory map."""
        from cgman.cli import wire
        conn, _ = self.listener.accept()
        with conn:
            data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            _close_fds(anc)
            while len(data) < wire.HEADER.size or len(data) < wire.HEADER.size + wire.decode_header(data[:12]):
                data += conn.recv(1 << 20)
            pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            client = os.readlink(f"/proc/{pid}/exe")
            maps = Path(f"/proc/{pid}/maps").read_text()
            conn.sendall(wire.FRAME.pack(wire.ACCEPTED, 1) + wire.FRAME.pack(wire.EXITED, 7))
        argv, environ, cwd = wire.decode_body(data[wire.HEADER.size:])
        return argv, environ, cwd, client, maps

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("argv, environ", [
    (["run", "-p", "g", "--", "x"], {}),
    (["--run-dir", "{tmp}/r", "run", "-p", "g"], {"CGMAN_CGROUP_ROOT": "/a/b/"}),
    (["run", "--run-dir={tmp}/r2", "--cgroup-root", "x", "-p", "g", "--", "--run-dir", "/no"],
     {"CGMAN_RUN_DIR": "{tmp}/e"}),
    (["run", "-p", "g"], {"CGMAN_RUN_DIR": "{tmp}/e", "CGMAN_CGROUP_ROOT": "r"}),
    (["run", "-p", "g"], {"CGMAN_RUN_DIR": "{tmp}/e/", "CGMAN_CGROUP_ROOT": "r//"}),
    # the workload's own words are not cgman's options, even without `--`
    (["run", "-p", "g", "--rm", "sh", "--run-dir", "/no", "-v"], {"CGMAN_RUN_DIR": "{tmp}/e"}),
    (["--cgroup-root", "r", "run", "-d", "--name", "n", "-p", "g", "env", "--cgroup-root=no"], {}),
    (["-v", "--cgroup-root=a/b", "run", "--rm", "-p", "g", "true"], {}),
])
def test_the_front_finds_the_socket_the_agent_binds(argv, environ, tmp_path):
    """The C front resolves --run-dir/--cgroup-root by hand (cli/thin.py's tables); the served run
    checks them as the direct path reads them (options.py, Settings, records.run_dir,
    drivers.cgroup_root). Both must name the same socket, or a run the agent could serve is
    launched directly. A test process plays the agent at the socket the direct path names."""
    from cgman.cli.supervise import client_settings
    from cgman.drivers import cgroup_root
    from cgman.state.agentsock import socket_path
    from cgman.state.records import run_dir
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    environ = {k: v.replace("{tmp}", str(tmp_path)) for k, v in environ.items()}
    env = {k: v for k, v in os.environ.items() if k not in ("CGMAN_RUN_DIR", "CGMAN_CGROUP_ROOT")}
    settings = client_settings(argv, dict(environ))
    run = run_dir(settings.run_dir) if settings.run_dir else str(tmp_path / "default-run")
    if not settings.run_dir:
        env["CGMAN_RUN_DIR"] = run                   # not /run/cgman, where a real agent may listen
    want = socket_path(run, cgroup_root(settings.cgroup_root))
    os.makedirs(os.path.dirname(want), exist_ok=True)
    agent = FakeAgent(want)
    try:
        p = subprocess.Popen([str(FRONT), *argv], env=dict(env, **environ), cwd=tmp_path,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got_argv, got_env, cwd, client, maps = agent.serve()
        out, err = p.communicate(timeout=60)
    finally:
        agent.close()
    assert p.returncode == 7, err
    assert [a.decode() for a in got_argv] == [str(FRONT), *argv] and cwd == os.fsencode(tmp_path)
    assert set(got_env) == {os.fsencode(f"{k}={v}") for k, v in dict(env, **environ).items()}
    assert ("served by the agent" in err.decode()) == ("-v" in argv[:argv.index("run")]), err
    assert client == os.path.realpath(FRONT) and "python" not in maps, maps   # the C front alone


def test_the_front_relays_signals_and_a_vanished_agent_is_one_line(tmp_path):
    """After ACCEPTED the front forwards SIGTERM as a SIGNAL frame; an agent that hangs up
    before EXITED is one error line and exit code 1 (its words: cli/thin.py's messages)."""
    from cgman.cli import wire
    env = dict(os.environ, CGMAN_RUN_DIR=str(tmp_path), CGMAN_CGROUP_ROOT="cgman-test-front")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "agent-cgman-test-front.sock"))
    listener.listen(1)
    listener.settimeout(60)
    with listener:
        p = subprocess.Popen([str(FRONT), "run", "-p", "g", "--", "true"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = listener.accept()
        with conn:
            _, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            _close_fds(anc)                  # its stdout and stderr: the pipes end with the front
            conn.sendall(wire.FRAME.pack(wire.ACCEPTED, 4242))
            until(lambda: _catches(p.pid, signal.SIGTERM), 10, "the front's signal handlers")
            p.send_signal(signal.SIGTERM)
            conn.settimeout(30)
            frame = b""
            while len(frame) < wire.FRAME.size:
                frame += conn.recv(wire.FRAME.size - len(frame))
        _, err = p.communicate(timeout=60)
    assert wire.FRAME.unpack(frame) == (wire.SIGNAL, signal.SIGTERM)
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert "closed the connection while it ran (its supervisor, pid 4242, is gone" in err


def _catches(pid: int, sig: int) -> bool:
    caught = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (sig - 1)))


def test_the_front_hands_every_other_line_to_the_python_cli(tmp_path):
    """No agent: `cgman run` is the direct path, and `cgman --help` is typer's, naming `cgman`; also
    through a link to the front elsewhere (docs/operations.md links it into /usr/local/bin)."""
    env = dict(os.environ, CGMAN_RUN_DIR=str(tmp_path), CGMAN_CGROUP_ROOT="cgman-test-front")
    link = tmp_path / "bin" / "cgman"
    link.parent.mkdir()
    link.symlink_to(FRONT)
    p = subprocess.run([str(link), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Usage: cgman " in p.stdout, p.stdout + p.stderr
    p = subprocess.run([str(FRONT), "-v", "run", "-p", "nosuchgroup", "--", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert f"launching here (no agent serves {tmp_path}/agent-cgman-test-front.sock: No such file" in p.stderr
    assert p.returncode != 0 and "nosuchgroup" in p.stderr, p.stderr


def test_the_front_is_built_from_this_tree(tmp_path):
    """The installed front carries the digest of its header's definitions and its source
    (cli/thin.py): one built from other option tables, protocol or _client.c fails here (an
    editable install not rebuilt: `pip install -e .`). The build makes the header with python -S
    (setup.py): the definitions must need nothing but the standard library."""
    from cgman.cli import thin
    p = subprocess.run([PY, "-S", "-B", "-m", "cgman.cli.thin"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert p.returncode == 0 and p.stdout == thin.header(), p.stderr
    assert f"{thin.BUILD_MARK}{thin.digest()}".encode() in FRONT.read_bytes(), "rebuild: pip install -e ."


def test_a_closed_stdio_fd_is_not_replaced_by_the_agents_socket(tmp_path):
    """With fd 0 closed the socket would take number 0 and be sent as the container's stdin; the
    front launches by itself instead, and the test's agent sees no request."""
    env = dict(os.environ, CGMAN_RUN_DIR=str(tmp_path), CGMAN_CGROUP_ROOT="cgman-test-front")
    agent = FakeAgent(str(tmp_path / "agent-cgman-test-front.sock"))
    try:
        for fd in (0, 1):
            p = subprocess.run(["sh", "-c", f'exec "$0" "$@" {fd}>&-', str(FRONT), "-v", "run", "-p", "nosuchgroup",
                                "--", "true"], env=env, stdout=subprocess.PIPE if fd == 0 else None,
                               stderr=subprocess.PIPE, text=True, timeout=60)
            assert f"launching here (file descriptor {fd}, its stdin, stdout or stderr, is closed)" in p.stderr
            assert p.returncode != 0 and "nosuchgroup" in p.stderr, p.stderr
        agent.listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            agent.listener.accept()
    finally:
        agent.close()


def test_the_front_sends_nothing_to_a_socket_that_root_does_not_serve(tmp_path):
    """The environment and the terminal go to root's agent only: a socket bound by another user
    (a run dir others can write to) gets a connection and nothing more."""
    run_dir = Path(tempfile.mkdtemp(prefix="cgman-test-run-"))       # traversable by nobody
    try:
        run_dir.chmod(0o777)
        sock = run_dir / "agent-cgman-test-front.sock"
        listen = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({str(sock)!r})\ns.listen(1)\n"
                  f"print('ready', flush=True)\ns.settimeout(60)\nc, _ = s.accept()\nc.settimeout(60)\n"
                  f"print('got', len(c.recv(1 << 20)), flush=True)")
        nobody = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", listen],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert nobody.stdout.readline().strip() == "ready"
            env = dict(os.environ, CGMAN_RUN_DIR=str(run_dir), CGMAN_CGROUP_ROOT="cgman-test-front")
            p = subprocess.run([str(FRONT), "-v", "run", "-p", "nosuchgroup", "--", "true"], env=env,
                               capture_output=True, text=True, timeout=60)
            got = nobody.communicate(timeout=60)[0]
        finally:
            if nobody.poll() is None:
                nobody.kill()
                nobody.wait()
        assert f"launching here (the socket {sock} is served by uid 65534, not by root)" in p.stderr, p.stderr
        assert got.strip() == "got 0" and p.returncode != 0, (got, p.stderr)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_front_whose_cli_is_a_link_back_to_itself_says_so(tmp_path):
    (tmp_path / "cgman").write_bytes(FRONT.read_bytes())
    (tmp_path / "cgman").chmod(0o755)
    (tmp_path / "cgman-cli").symlink_to("cgman")
    p = subprocess.run([str(tmp_path / "cgman"), "ps"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 1 and "it is this program" in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_the_wire_bounds_every_field():
    from cgman.cli import wire
    req = wire.encode_request([b"cgman", b"run"], [b"A=1", b"B="], b"/tmp")
    assert wire.decode_header(req[:wire.HEADER.size]) == len(req) - wire.HEADER.size
    assert wire.decode_body(req[wire.HEADER.size:]) == ([b"cgman", b"run"], [b"A=1", b"B="], b"/tmp")
    for bad in (wire.encode_request([b"x\0y"], [], b"/"), wire.encode_request([], [], b"/"),
                wire.encode_request([b"x"], [b"=v"], b"/"), wire.encode_request([b"x"], [], b"rel"),
                wire.encode_request([b"x"], [b"NOEQUALS"], b"/"),
                wire.encode_request([b"x" * (wire.MAX_STRING_BYTES + 1)], [], b"/"),
                wire.encode_request([b"x"], [], b"/") + b"extra"):
        with pytest.raises(wire.BadRequest):
            wire.decode_body(bad[wire.HEADER.size:])
    # beyond a bound but well formed: declined (the client launches by itself), not dropped
    for large in (wire.encode_request([b"x" * (wire.MAX_STRING_BYTES + 1)], [], b"/"),
                  wire.encode_request([b"x"] * (wire.MAX_ITEMS + 1), [], b"/")):
        with pytest.raises(wire.TooLarge):
            wire.decode_body(large[wire.HEADER.size:])


def test_the_run_server_loads_the_device_program_once_for_all_its_runs():
    """The BPF verifier costs a few ms per load: the run server loads the default device program
    before it forks, so each supervisor attaches the program it inherited instead of loading one."""
    from cgman.drivers import open_host
    code = ("import os, sys\n"
            "from cgman.cli import served\n"
            "served.prewarm('cgman-test-prewarm')\n"
            "fds = os.listdir('/proc/self/fd')\n"
            "links = [os.readlink(f'/proc/self/fd/{fd}') for fd in fds if os.path.lexists(f'/proc/self/fd/{fd}')]\n"
            "print(sum(link == 'anon_inode:bpf-prog' for link in links))\n")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == (1 if open_host("cgman-test-prewarm").v2 is not None else 0)
