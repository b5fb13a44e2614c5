"""The direct `cgman run` path made lean (issue 13, item 3): what it no longer imports has a
replacement that behaves the same."""

from __future__ import annotations

import os
import urllib.parse

import pytest

from cgman.accounting.ledger import _uri_quote
from cgman.state.safedir import SafeDir


@pytest.mark.parametrize("path", ["/var/lib/cgman/ledger.db", "/tmp/a?mode=rw#x/l.db", "/tmp/100%/é ü/l.db",
                                  "/tmp/~user/a-b_c.d/l.db", "/tmp/\x01\x7f/l.db", "/tmp/日本/l.db"])
def test_ledger_uri_quote_is_urllibs(path: str) -> None:
    assert _uri_quote(path) == urllib.parse.quote(path)


def _tree(base: str) -> SafeDir:
    d = SafeDir(base, "test dir", "--x")
    d.fd()
    return d


def test_remove_flat_dir_nested_dir_and_links_stay_outside(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    d = _tree(str(tmp_path / "run"))
    flat = tmp_path / "run" / "flat"
    flat.mkdir()
    (flat / "record.json").write_text("{}")
    (flat / "collect.lock").write_text("")
    os.symlink(outside, flat / "link")                  # a link in a flat dir goes itself
    d.remove("flat")
    assert not flat.exists() and (outside / "keep").exists()
    nested = tmp_path / "run" / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / "a" / "b" / "f").write_text("x")
    (nested / "g").write_text("x")
    os.symlink(outside, nested / "a" / "link")
    d.remove("nested")
    assert not nested.exists() and (outside / "keep").exists()
    os.symlink(outside, tmp_path / "run" / "dirlink")   # a link to a dir: the link goes, not the dir
    d.remove("dirlink")
    assert not os.path.lexists(tmp_path / "run" / "dirlink") and (outside / "keep").exists()
    d.remove("missing")                                  # nothing there: nothing to do
