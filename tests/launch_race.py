"""Run `cgman ARGS` with the launcher made to lose one race of the launch (tests/test_launch_review.py).

    python tests/launch_race.py RACE ARGS...

exited-before-record: the container's first process has exited (a zombie, not yet reaped) by the
time the launcher reads its start time for the record, as a short workload on a loaded host does.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgman.containers import launch  # noqa: E402
from cgman.cli import main  # noqa: E402


def _exited_before_record() -> None:
    real = launch.proc_start_ticks

    def after_exit(pid: int, *args, **kw):
        if pid != os.getpid():
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)     # a zombie now; still ours to reap
        return real(pid, *args, **kw)
    launch.proc_start_ticks = after_exit


RACES = {"exited-before-record": _exited_before_record}

if __name__ == "__main__":
    RACES[sys.argv[1]]()
    sys.argv = ["cgman", *sys.argv[2:]]
    sys.exit(main())
