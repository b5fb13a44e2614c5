"""The agent's view of a policy directory: the last good version of every file.

An operator edits one file of many while the agent runs. A typo in that file must
not take down the agent nor un-apply what the file said before: the file's last
good groups stay in force, its error is logged with file:line, and the agent goes
on. The same holds for a file that parses but that the kernel refuses (a cpuset
the host does not have): ``reject`` puts its last applied version back until the
file changes again.

Changes are detected by content, not by mtime: editors that write twice, touch,
or a ConfigMap's symlink swap cause at most one re-apply per real change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PolicyError
from ..model import Group, PolicySet
from ..policy import parse_text

log = logging.getLogger(__name__)
SUFFIXES = (".yaml", ".yml")


@dataclass
class FileState:
    digest: bytes | None = None              # of the text last read (None: unreadable)
    good: list[Group] | None = None          # last version that parsed and was accepted
    applied: list[Group] | None = None       # the version in force after the last good apply
    error: str | None = None                 # why the current text is not in force


@dataclass
class Scan:
    changed: list[str] = field(default_factory=list)      # files whose text changed (added too)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)       # new errors, one line each


class PolicyDir:
    """Last good groups per file of one directory (``*.yaml``/``*.yml``, in name order)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files: dict[str, FileState] = {}
        self.missing: str | None = None        # why the directory cannot be listed

    def _list(self) -> list[str] | None:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return None
        out = []
        for n in names:
            p = os.path.join(self.directory, n)
            if n.endswith(SUFFIXES) and not n.startswith(".") and os.path.isfile(p):
                out.append(p)
        return out

    def scan(self) -> Scan:
        """Re-read every file; parse those whose text changed. Never raises on a bad file."""
        res = Scan()
        present = self._list()
        if present is None:
            # Mid-deploy (rm -r; cp -r) or a typo in --policy-dir: forgetting every group
            # would be the worse guess. What is in force stays until the directory is back.
            err = f"{self.directory}: cannot list the policy directory; keeping the policies in force"
            if self.missing != err:
                log.error("%s", err)
                res.errors.append(err)
            self.missing = err
            return res
        self.missing = None
        for gone in [f for f in self.files if f not in present]:
            del self.files[gone]
            res.removed.append(gone)
        for path in present:
            st = self.files.setdefault(path, FileState())
            try:
                raw = Path(path).read_bytes()
            except OSError as e:              # vanished between listdir and open, or unreadable
                if not os.path.exists(path):
                    del self.files[path]
                    res.removed.append(path)
                    continue
                raw = None
                err = f"{path}: cannot read: {e.strerror}"
            digest = hashlib.sha256(raw).digest() if raw is not None else None
            if digest is not None and digest == st.digest:
                continue
            res.changed.append(path)
            st.digest = digest
            if raw is None:
                self._fail(st, err, res)
                continue
            try:
                groups = parse_text(raw.decode("utf-8"), path)
            except UnicodeDecodeError as e:
                self._fail(st, f"{path}: not UTF-8 text: {e.reason}", res)
                continue
            except PolicyError as e:
                self._fail(st, str(e), res)
                continue
            clash = self._clash(path, groups)
            if clash:
                self._fail(st, clash, res)
                continue
            st.good, st.error = groups, None
        return res

    def _clash(self, path: str, groups: list[Group]) -> str | None:
        """A group that another file in force already defines (the first file keeps it)."""
        theirs = {g.path: g for f, s in self.files.items() if f != path and s.good for g in s.good}
        for g in groups:
            if g.path in theirs:
                loc = g.location
                return (f"{loc.file}:{loc.line}:{loc.column}: policies.{g.path.replace('/', '.children.')}: "
                        f"group '{g.path}' is already defined at {theirs[g.path].location}")
        return None

    @staticmethod
    def _fail(st: FileState, err: str, res: Scan) -> None:
        st.error = err
        res.errors.append(err)
        kept = f"keeping its last good version ({len(st.good)} groups)" if st.good is not None \
            else "nothing from it is applied until it is fixed"
        log.error("%s; %s", err, kept)

    def policies(self) -> PolicySet:
        """Every file's groups in force: files in name order, parents before children."""
        groups: list[Group] = []
        files: list[str] = []
        for path in sorted(self.files):
            st = self.files[path]
            if st.good is not None:
                groups.extend(st.good)
                files.append(path)
        return PolicySet(tuple(groups), tuple(files))

    def accepted(self) -> None:
        """The policies() just applied cleanly: they become each file's fallback."""
        for st in self.files.values():
            st.applied = st.good

    def reject(self, why: str) -> list[str]:
        """The kernel refused the set: files that differ from their applied version go back
        to it (until they change again). Returns the files rolled back."""
        back = []
        for path, st in self.files.items():
            if st.good is not st.applied:
                st.good, st.error = st.applied, why
                back.append(path)
        return back

    def invalid(self) -> int:
        """Files whose current text is not in force."""
        return sum(1 for st in self.files.values() if st.error is not None) + (self.missing is not None)
