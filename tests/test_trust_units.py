"""Issue 16, pure parts: the record checker's rules, the ledger path, safe dirs."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from cgman.state.recordcheck import RULES, InvalidRecord, OtherRoot, check, valid_ifname
from cgman.state.records import Record

GOOD = {"id": "0" * 32, "name": "c1", "group": "acme/web", "tenant": "acme", "cgroup": "acme/web/c1",
        "cgroup_root": "cgman", "argv": ["true"], "created": 1.0, "state": "exited", "pid": 123,
        "pid_start": 456, "network": {"mode": "bridge", "bridge": "cgman0", "address": "10.88.0.2"}}


def test_every_record_field_has_a_rule():
    """A field added to Record must say how a read-back value is checked (recordcheck.RULES)."""
    assert set(RULES) == {f.name for f in dataclasses.fields(Record)}


def test_a_good_record_passes():
    assert Record.from_json(check(dict(GOOD), "r.json", "c1", "cgman")).cgroup == "acme/web/c1"


@pytest.mark.parametrize("edit, field", [
    ({"id": "XYZ"}, "id"), ({"name": "c2"}, "name"), ({"group": "acme/.."}, "group"),
    ({"group": "/abs"}, "group"), ({"cgroup": "acme/web/c2"}, "cgroup"), ({"cgroup_root": "a/../b"}, "cgroup_root"),
    ({"pid": "123"}, "pid"), ({"pid": 1}, "pid"), ({"pid": True}, "pid"), ({"pid_start": None}, "pid_start"),
    ({"created": float("nan")}, "created"), ({"state": "zombie"}, "state"), ({"argv": "sh"}, "argv"),
    ({"network": {"mode": "bridge", "bridge": "a/b"}}, "network"),
    ({"network": {"mode": "bridge", "bridge": "x" * 16}}, "network"),
    ({"network": {"mode": "bridge", "bridge": "br0", "address": "10.0.0.999"}}, "network"),
    ({"user_map": {"uid": -1, "gid": 0, "count": 1}}, "user_map"), ({"auto_remove": 1}, "auto_remove"),
    ({"limits": {"a": [1]}}, "limits"), ({"exit_code": 1.5}, "exit_code"),
])
def test_an_edited_field_names_itself(edit, field):
    with pytest.raises(InvalidRecord) as e:
        check(dict(GOOD, **edit), "r.json", "c1", "cgman")
    assert e.value.field == field and str(e.value).startswith(f"r.json: {field}: ")


def test_missing_fields_and_non_objects():
    with pytest.raises(InvalidRecord, match="r.json: cgroup: missing"):
        check({k: v for k, v in GOOD.items() if k != "cgroup"}, "r.json", "c1", "cgman")
    with pytest.raises(InvalidRecord, match="not a JSON object"):
        check([1], "r.json", "c1", "cgman")


def test_another_root_is_not_ours():
    with pytest.raises(OtherRoot, match="run it with --cgroup-root other"):
        check(dict(GOOD, cgroup_root="other"), "r.json", "c1", "cgman")


@pytest.mark.parametrize("name, ok", [("cgman0", True), ("x" * 15, True), ("x" * 16, False), ("", False),
                                      (".", False), ("..", False), ("a/b", False), ("a:b", False),
                                      ("a b", False), ("../../x", False)])
def test_interface_names_follow_the_kernel(name, ok):
    assert valid_ifname(name) is ok


# ------------------------------------------------------------------------------ ledger
@pytest.mark.parametrize("odd", ["st?x", "st#x", "st%3Fx", "st?mode=ro#y"])
def test_a_state_dir_with_uri_characters_keeps_the_ledger_in_it(tmp_path, odd):
    """Review: CGMAN_STATE_DIR='/tmp/st?x' put the ledger at /tmp/st (unescaped URI)."""
    from cgman.accounting.ledger import Entry, Ledger, ledger_path
    state = tmp_path / odd
    now = time.time()
    e = Entry("a" * 32, "c", "t", "g", "cgman", now - 1, now, 0, "exited", 1, 1, 0, 1.0, 1, 0, 0, None, None, 2.0, 1)
    with Ledger(ledger_path(str(state))) as led:
        assert led.record(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd], "nothing beside the state dir"
    assert (state / "ledger.db").stat().st_mode & 0o777 == 0o600
    with Ledger(ledger_path(str(state)), readonly=True) as led:
        assert [x.id for x in led.entries()] == ["a" * 32]


def test_an_old_world_readable_ledger_is_made_private(tmp_path):
    from cgman.accounting.ledger import Ledger
    path = tmp_path / "ledger.db"
    with Ledger(str(path)) as led:
        led.connect()
    path.chmod(0o644)
    with Ledger(str(path)) as led:
        led.connect()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_ledger_link_is_refused(tmp_path):
    from cgman.accounting.ledger import Ledger, LedgerError
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ledger.db").symlink_to(tmp_path / "elsewhere" / "x.db")
    with pytest.raises(LedgerError, match="is a symlink"), Ledger(str(tmp_path / "ledger.db")) as led:
        led.connect()
    assert not os.listdir(tmp_path / "elsewhere")
