"""cgman/lazylog.py: the launch path's loggers import logging only for a record that is shown,
and show exactly what logging itself would. Each case runs in a fresh interpreter (this
one imported logging long ago)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from tests.conftest import REPO


def run(body: str) -> tuple[str, str]:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip(), p.stderr.strip()


def test_nothing_configured_drops_below_warning_and_shows_the_rest_as_logging_would():
    out, err = run("""
        import sys
        from cgman import lazylog
        log = lazylog.getLogger("cgman.x")
        log.debug("d %s", 1); log.info("i")
        print("logging" in sys.modules, log.isEnabledFor(lazylog.DEBUG), log.isEnabledFor(lazylog.WARNING))
        log.warning("w %s", 2)
        print("logging" in sys.modules)
    """)
    assert out.split() == ["False", "False", "True", "True"]
    assert err == "w 2"                    # logging's last-resort handler: the message alone


def test_a_deferred_setup_runs_before_the_first_shown_record_only():
    out, err = run("""
        import sys
        from cgman import lazylog
        from cgman.cli import logs
        logs.setup_when_needed(False)
        log = lazylog.getLogger("cgman.x")
        log.info("not shown")
        print("logging" in sys.modules)
        log.error("e %s", "x")
        log.warning("w")
    """)
    assert out == "False"
    assert err.splitlines() == ["cgman: ERROR: e x", "cgman: WARNING: w"]


def test_a_deferred_verbose_setup_shows_debug_with_the_logger_name():
    out, err = run("""
        import sys
        from cgman import lazylog
        from cgman.cli import logs
        logs.setup_when_needed(True)
        print("logging" in sys.modules)
        lazylog.getLogger("cgman.y").debug("write %s", "f")
    """)
    assert out == "False" and err == "cgman: DEBUG: cgman.y: write f"


def test_a_module_logging_through_logging_itself_gets_the_deferred_format():
    out, err = run("""
        import sys
        from cgman import lazylog
        from cgman.cli import logs
        logs.setup_when_needed(False)
        import logging                      # as a module that logs through logging directly
        logging.getLogger("cgman.z").warning("w %d", 1)
        logging.getLogger("cgman.z").info("not shown")
        lazylog.getLogger("cgman.y").error("e")
    """)
    assert err.splitlines() == ["cgman: WARNING: w 1", "cgman: ERROR: e"]


def test_verbose_shows_debug_with_the_logger_name_and_the_callers_line():
    _, err = run("""
        import logging
        from cgman import lazylog
        from cgman.cli import logs
        logs.setup_when_needed(True)
        logging.getLogger().handlers[0].setFormatter(logging.Formatter("%(name)s %(funcName)s %(message)s"))
        def caller():
            lazylog.getLogger("cgman.y").debug("write %s", "f")
        caller()
    """)
    assert err == "cgman.y caller write f"


def test_once_logging_is_imported_the_real_logger_decides(caplog):
    from cgman import lazylog
    log = lazylog.getLogger("cgman.test-lazylog")
    with caplog.at_level(logging.DEBUG, logger="cgman.test-lazylog"):
        log.debug("d %d", 1)
        assert log.isEnabledFor(lazylog.DEBUG)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [("cgman.test-lazylog", 10, "d 1")]
    logging.getLogger("cgman.test-lazylog").setLevel(logging.ERROR)
    try:
        assert not log.isEnabledFor(lazylog.WARNING)
    finally:
        logging.getLogger("cgman.test-lazylog").setLevel(logging.NOTSET)
