"""The agent's view of a policy directory: which version of every file is in force.

An operator edits one file of many while the agent runs. A typo in that file must
not take down the agent nor un-apply what the file said before: the file's last
applied groups stay in force, its error is logged with file:line, and the agent goes
on. The same holds for a file that parses but that the kernel refuses (a cpuset the
host does not have): ``refuse`` puts that file's last applied version back until the
file changes again, and every other file keeps its new version.

Per file there is a *candidate*: the groups of its current text, or its last applied
groups while the text has an error or was refused. Which candidates are in force is
decided again after every scan (``_resolve``), so that a duplicate group clears up
as soon as either file is fixed. On a duplicate, a file whose candidate is what it
had applied (an incumbent) keeps the group and the newcomer is refused; between two
newcomers the first by name wins. The applied versions are saved in the state dir,
so a restart with a broken file keeps the file's last good version in force.

Changes are detected by content, not by mtime, so editors that write twice, touch,
or a ConfigMap's symlink swap cause at most one re-apply per real change. A file
modified in the last QUIET_S seconds waits for the next pass: a copy or an in-place
writer caught half-way must not be applied (write files by rename to be safe).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field

from ..errors import PolicyError
from ..inputs import DEFAULT_LIMITS, Limits, read_input
from ..model import Group, PolicySet
from ..policy import parse_text

log = logging.getLogger(__name__)
SUFFIXES = (".yaml", ".yml")
QUIET_S = 0.5


@dataclass
class FileState:
    """What the agent knows of one policy file: its last text, parse and apply outcomes."""

    digest: bytes | None = None              # of the text last read (or of its read error)
    parsed: list[Group] | None = None        # groups of that text, None if it does not parse
    parse_error: str | None = None
    refused: str | None = None               # the kernel refused this text: why
    applied: list[Group] | None = None       # the version in force after the last good apply
    good: list[Group] | None = None          # in force now (decided by _resolve)
    error: str | None = None                 # why the current text is not in force

    def candidate(self) -> list[Group] | None:
        if self.parsed is not None and self.refused is None:
            return self.parsed
        return self.applied


@dataclass
class Scan:
    """What one scan of the policy directory found."""

    changed: list[str] = field(default_factory=list)      # files whose text changed (added too)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)       # new errors, one line each
    deferred: bool = False                                # a file is being written: scan again soon


class PolicyDir:
    """The files of one directory (``*.yaml``/``*.yml``, not hidden, in name order)."""

    def __init__(self, directory: str, memory: str | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.directory = directory
        self.limits = limits                    # per file: bytes, groups, aliases; groups in force in all
        self.memory = memory                    # where applied versions survive restarts
        self.files: dict[str, FileState] = {}
        self.missing: str | None = None        # why the directory cannot be listed
        self._reported: dict[str, str | None] = {}
        if memory:
            from ..state.applied import load_pickle
            saved = load_pickle(memory)
            if isinstance(saved, dict) and os.path.realpath(directory) == saved.get("directory"):
                for path, groups in saved.get("applied", {}).items():
                    self.files[path] = FileState(applied=groups, good=groups)

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

    def forget(self) -> None:
        """SIGHUP: read and try every file again, refused ones too (the host may be fixed)."""
        for st in self.files.values():
            st.digest, st.refused = None, None

    def scan(self) -> Scan:
        """Re-read every file, parse those whose text changed, decide what is in force.
        Never raises on a bad file."""
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
        now = time.time()
        for path in present:
            st = self.files.setdefault(path, FileState())
            try:
                if now - os.stat(path).st_mtime < QUIET_S:
                    res.deferred = True          # being written: read it once it is quiet
                    continue
                raw: bytes | None = read_input(path, self.limits.max_input_bytes)
                err = ""
            except (OSError, PolicyError) as e:
                if not os.path.exists(path):
                    del self.files[path]
                    res.removed.append(path)
                    continue
                raw, err = None, str(e) if isinstance(e, PolicyError) else f"{path}: cannot read: {e.strerror}"
            digest = hashlib.sha256(raw if raw is not None else err.encode()).digest()
            if digest == st.digest:
                continue
            res.changed.append(path)
            st.digest, st.refused = digest, None
            st.parsed, st.parse_error = None, None
            if raw is None:
                st.parse_error = err
                continue
            try:
                st.parsed = parse_text(raw.decode("utf-8"), path, self.limits)
                if st.parsed == st.applied:
                    st.parsed = st.applied         # the same groups: not a change to apply
            except UnicodeDecodeError as e:
                st.parse_error = f"{path}: not UTF-8 text: {e.reason}"
            except PolicyError as e:
                st.parse_error = str(e)
            except Exception as e:        # a bug must cost one file, never the agent
                log.exception("parsing %s failed", path)
                st.parse_error = f"{path}: cannot parse: {type(e).__name__}: {e}"
        res.errors = self._resolve()
        return res

    def _resolve(self) -> list[str]:
        """Decide each file's groups in force; log errors that are new. Returns them."""
        owner: dict[str, tuple[str, Group]] = {}
        incumbents = sorted(self.files, key=lambda p: (self.files[p].candidate() is not self.files[p].applied, p))
        for path in incumbents:
            st = self.files[path]
            cand = st.candidate()
            error = st.parse_error or st.refused
            clash = self._clash(cand, owner) if cand else None
            if not clash and cand and len(owner) + len(cand) > self.limits.max_groups:
                clash = (f"{path}: its {len(cand)} groups would bring the directory past "
                         f"{self.limits.max_groups} groups: split the policies, or raise CGMAN_MAX_GROUPS")
            if clash and cand is not st.applied and st.applied and not self._clash(st.applied, owner):
                cand, error = st.applied, clash             # the new text clashes: keep the old
            elif clash:
                cand, error = None, clash
            st.good, st.error = cand, error
            for g in cand or []:
                owner[g.path] = (path, g)
        new = []
        for path, st in sorted(self.files.items()):
            if st.error and self._reported.get(path) != st.error:
                kept = f"keeping its last good version ({len(st.good)} groups)" if st.good is not None \
                    else "nothing from it is applied until it is fixed"
                log.error("%s; %s", st.error, kept)
                new.append(st.error)
            self._reported[path] = st.error
        for path in [p for p in self._reported if p not in self.files]:
            del self._reported[path]
        return new

    @staticmethod
    def _clash(groups: list[Group], owner: dict[str, tuple[str, Group]]) -> str | None:
        for g in groups:
            if g.path in owner:
                loc = g.location
                return (f"{loc.file}:{loc.line}:{loc.column}: policies.{g.path.replace('/', '.children.')}: "
                        f"group '{g.path}' is already defined at {owner[g.path][1].location}")
        return None

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

    def changed_since_applied(self) -> list[str]:
        return [p for p, st in self.files.items() if st.good is not st.applied]

    def accepted(self) -> None:
        """The policies() just applied cleanly: they become each file's fallback (and are saved)."""
        dirty = False
        for st in self.files.values():
            if st.applied is not st.good:
                st.applied, dirty = st.good, True
        if dirty and self.memory:
            from ..state.applied import dump
            try:
                os.makedirs(os.path.dirname(self.memory), mode=0o755, exist_ok=True)
                dump(self.memory, {"directory": os.path.realpath(self.directory),
                                   "applied": {p: st.applied for p, st in self.files.items()
                                               if st.applied is not None}})
            except OSError as e:
                log.error("cannot save the applied policies to %s: %s (a restart with a broken file "
                          "would not know its last good version)", self.memory, e.strerror)

    def refuse(self, path: str, why: str) -> bool:
        """The kernel refused ``path``'s version: its last applied one goes back in force.
        False if that file was not changed since the last apply (nothing to go back to)."""
        st = self.files.get(path)
        if st is None or st.good is st.applied:
            return False
        st.refused = why
        self._resolve()
        return True

    def refuse_changed(self, why: str) -> list[str]:
        """A refusal that names no file: every changed file goes back to its applied version."""
        back = self.changed_since_applied()
        for p in back:
            self.files[p].refused = why
        self._resolve()
        return back

    def invalid(self) -> int:
        """Files whose current text is not in force."""
        return sum(1 for st in self.files.values() if st.error is not None) + (self.missing is not None)
