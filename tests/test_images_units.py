"""Images, pure and file-level: the Dockerfile parser, variable expansion, layer snapshots
(overlayfs whiteouts -> OCI) and the hostile-tar checks of layer extraction."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cgman.images import dockerfile as D
from cgman.images import layers as L


# ------------------------------------------------------------------------------ Dockerfile
def test_parser_reads_the_subset_with_continuations_and_comments():
    text = ("# syntax=docker/dockerfile:1\nARG V=1\nFROM scratch AS x\n"
            "RUN echo a \\\n  # inside\n  && echo b\nCOPY --chown=1:2 [\"a b\", \"/d/\"]\n"
            "ENV A=1 B=\"two words\"\nENV OLD form value\nCMD [\"/bin/sh\"]\nEXPOSE 80 53/udp\n")
    ins = D.parse(text, "Df")
    assert [i.cmd for i in ins] == ["ARG", "FROM", "RUN", "COPY", "ENV", "ENV", "CMD", "EXPOSE"]
    assert ins[2].rest == "echo a && echo b" and ins[2].line == 4 and ins[2].exec_form is None
    assert ins[3].flags == {"chown": "1:2"} and ins[3].args == ("a b", "/d/")
    assert ins[4].args == ("A=1", "B=two words") and ins[5].args == ("OLD=form value",)
    assert ins[6].exec_form == ("/bin/sh",)


@pytest.mark.parametrize("text,msg", [
    ("FROM scratch\nHEALTHCHECK CMD true\n", "Df:2: HEALTHCHECK: instruction not supported"),
    ("FROM scratch\nFOO bar\n", "Df:2: FOO: instruction not supported (unknown instruction)"),
    ("RUN true\n", "Df:1: RUN: the first instruction must be FROM"),
    ("FROM scratch\nFROM scratch\n", "Df:2: FROM: multi-stage builds are not supported"),
    ("FROM scratch\nCOPY --from=x a b\n", "Df:2: COPY: option --from is not supported"),
    ("FROM scratch\nCOPY a\n", "Df:2: COPY: needs at least one source and a destination"),
    ("FROM scratch\nRUN --mount=type=cache true\n", "Df:2: RUN: RUN options"),
    ("FROM scratch\nEXPOSE http\n", "Df:2: EXPOSE: bad port 'http'"),
    ("FROM scratch\nLABEL novalue\n", "Df:2: LABEL: 'novalue': use KEY=VALUE"),
])
def test_parser_errors_name_file_line_and_instruction(text, msg):
    with pytest.raises(D.DockerfileError) as e:
        D.parse(text, "Df")
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,want", [
    ("$A/${B}", "1/2"), ("${MISSING:-dflt}", "dflt"), ("${A:+alt}", "alt"), ("${MISSING:+alt}", ""),
    ("\\$A", "$A"), ("$MISSING.x", ".x"),
])
def test_expand(text, want):
    assert D.expand(text, {"A": "1", "B": "2"}) == want


# ------------------------------------------------------------------------------ layers
def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r|")


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, mode
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = 1, 3
    return ti


def test_snapshot_and_extract_convert_whiteouts_both_ways(tmp_path: Path):
    upper = tmp_path / "upper"
    (upper / "d" / "sub").mkdir(parents=True)
    (upper / "d" / "sub" / "f").write_text("x")
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "hard").write_text("h")
    os.link(upper / "hard", upper / "hard2")
    (upper / "ln").symlink_to("/etc/passwd")
    buf = io.BytesIO()
    L.snapshot(str(upper), buf)
    buf.seek(0)
    names = tarfile.open(fileobj=buf).getnames()
    assert {"d", "d/.wh..wh..opq", "d/sub/f", ".wh.gone", "hard", "hard2", "ln"} <= set(names)
    assert tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getmember("hard2").islnk()
    buf.seek(0)
    out = tmp_path / "out"
    out.mkdir()
    L.extract(tarfile.open(fileobj=buf, mode="r|"), str(out))
    st = os.lstat(out / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(out / "d", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(out / "d", "user.overlay.opaque") == b"y"
    assert os.readlink(out / "ln") == "/etc/passwd" and (out / "d" / "sub" / "f").read_text() == "x"
    assert os.stat(out / "hard").st_ino == os.stat(out / "hard2").st_ino


@pytest.mark.parametrize("members,msg", [
    ([(_ti("/etc/passwd"), b"x")], "absolute paths are not allowed"),
    ([(_ti("a/../../x"), b"x")], "'..' is not allowed"),
    ([(_ti("dev/sda", tarfile.BLKTYPE), None)], "a device node is not allowed"),
    ([(_ti("null", tarfile.CHRTYPE), None)], "a device node is not allowed"),
    ([(_ti("l", tarfile.SYMTYPE, "/etc"), None), (_ti("l/passwd"), b"x")], "passes through 'l'"),
    ([(_ti("h", tarfile.LNKTYPE, "../outside"), None)], "'..' is not allowed"),
    ([(_ti("l", tarfile.SYMTYPE, "/etc"), None), (_ti("h", tarfile.LNKTYPE, "l/passwd"), None)], "passes through"),
    ([(_ti("h", tarfile.LNKTYPE, "/etc/passwd"), None)], "absolute paths are not allowed"),
    ([(_ti("big"), b"x" * 5000)], "more than 4096 bytes"),
])
def test_extract_refuses_hostile_members(tmp_path: Path, members, msg):
    outside = tmp_path / "outside"
    outside.write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(L.LayerError) as e:
        L.extract(_tar(members), str(dest), L.Limits(max_bytes=4096))
    assert msg in str(e.value)
    assert outside.read_text() == "keep" and not os.path.exists("/etc/passwd.x")


def test_a_gzip_bomb_stops_at_the_budget(tmp_path: Path):
    import gzip
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo("zeros")
        ti.size = 64 << 20
        t.addfile(ti, io.BytesIO(bytes(64 << 20)))
    blob = gzip.compress(raw.getvalue())
    assert len(blob) < 200_000                 # 64 MiB of zeros, ~65 KiB of gzip
    dest = tmp_path / "d"
    dest.mkdir()
    tar, _reader = L.open_layer(io.BytesIO(blob), "application/vnd.oci.image.layer.v1.tar+gzip",
                                L.Limits(max_bytes=1 << 20, max_entries=10))
    with pytest.raises(L.LayerError, match="more than"):
        L.extract(tar, str(dest), L.Limits(max_bytes=1 << 20, max_entries=10))
    assert sum(f.stat().st_size for f in dest.rglob("*")) <= 2 << 20


def test_a_group_names_an_image_or_a_rootfs_not_both(tmp_path: Path):
    from cgman.errors import PolicyError
    from cgman.policy import load_files
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\npolicies:\n  a:\n    launch: {image: \"app:1\"}\n")
    assert load_files([f]).get("a").launch.image == "app:1"
    f.write_text("version: 1\npolicies:\n  a:\n    launch: {image: \"app:1\", rootfs: {path: /srv}}\n")
    with pytest.raises(PolicyError, match="give image or rootfs, not both"):
        load_files([f])
    f.write_text("version: 1\npolicies:\n  a:\n    launch: {image: \"App\"}\n")
    with pytest.raises(PolicyError, match="NAME:TAG"):
        load_files([f])
