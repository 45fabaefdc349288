"""Visitors of the dashboard: who they are, their private workspace, what they may see, their limits, expiry.

Local mode has one visitor, ``local``, whose workspace is the data folder
itself (as before shared mode existed). In shared mode each visitor has a
private folder ``<home>/visitors/<key>/`` holding their own run store, their
workspace (dataset choice, split, job ids) and their uploads. The key is a hash
of what identifies them, never the secret itself:

- an unguessable token (``new_token``) kept in the page's URL: whoever has the
  link has the workspace; only tokens this server issued are accepted;
- or, where the operator configured ``st.login``, the identity provider's
  issuer and subject.

Every run a visitor can name is looked up in their own store, then in the
showcase store (runs the operator shows everyone, read-only); anything else is
"not found". A workspace idle for ``Limits.idle_hours`` is removed with its
files by ``sweep``. Nothing here imports streamlit.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from toptune_core.config import DEMO_DATASET, Limits, Settings
from toptune_core.errors import LimitReached, RunNotFound
from toptune_core.runs.store import RunRecord, RunStore
from toptune_core.workspace import Workspace

LOCAL = "local"
SEEN_FILE = ".seen"
_MB = 2 ** 20
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def new_token() -> str:
    """An unguessable visitor token (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def _key(kind: str, secret: str) -> str:
    return hashlib.sha256(f"{kind}:{secret}".encode()).hexdigest()[:32]


def _du(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


@dataclass(frozen=True)
class Visitor:
    """One visitor: their private folder and what they may read and do."""

    key: str
    home: Path
    limits: Limits
    showcase_root: Optional[Path] = None  # shared mode: the operator's showcase store, read-only here

    @property
    def shared(self) -> bool:
        return self.key != LOCAL

    def store(self) -> RunStore:
        """This visitor's own runs."""
        return RunStore(self.home)

    def workspace(self) -> Workspace:
        return Workspace(self.home)

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    def showcase(self) -> Optional[RunStore]:
        """The showcase store (shared mode, once the operator has added a run), else None."""
        if self.showcase_root is None or not (self.showcase_root / "runs.sqlite").is_file():
            return None
        return RunStore(self.showcase_root)

    def is_showcase(self, run: RunRecord) -> bool:
        return self.showcase_root is not None and Path(run.dir).parent.parent == self.showcase_root

    def completed_runs(self) -> list[RunRecord]:
        """This visitor's completed runs, then the showcase runs (each list newest first)."""
        stores = [self.store(), self.showcase()]
        return [r for s in stores if s is not None for r in s.list(status="completed") if r.accuracy is not None]

    def find_run(self, run_id: str) -> tuple[RunStore, RunRecord]:
        """``(store, run)`` for a run this visitor may see: their own or a showcase run; else ``RunNotFound``."""
        for store in (self.store(), self.showcase()):
            if store is None:
                continue
            try:
                return store, store.get(run_id)
            except RunNotFound:
                continue
        shown = "".join(c for c in str(run_id)[:40] if c.isprintable())
        raise RunNotFound(f"Run '{shown}' was not found in your workspace.")

    # --- limits ------------------------------------------------------------------------------------

    def disk_mb(self) -> float:
        return _du(self.home) / _MB

    def check_room(self, extra_bytes: int = 0) -> None:
        """``LimitReached`` if this workspace (plus ``extra_bytes``) would go over its disk limit."""
        limit = self.limits.disk_mb
        if limit is None:
            return
        used = self.disk_mb()
        if used + extra_bytes / _MB > limit:
            more = f" and this needs {extra_bytes / _MB:,.0f} MB more" if extra_bytes else ""
            raise LimitReached(f"Your workspace uses {used:,.1f} MB of the {limit:,g} MB this server allows one "
                               f"visitor{more}. Delete runs you no longer need on the Compare page, then try again.")

    def check_new_run(self) -> None:
        """``LimitReached`` if this workspace may not record another run (the run count or the disk)."""
        limit = self.limits.runs
        if limit is not None:
            n = len(self.store().list())
            if n >= limit:
                raise LimitReached(f"Your workspace holds {n} run(s), the most this server keeps for one visitor "
                                   f"({limit}). Delete runs you no longer need on the Compare page, then try again.")
        self.check_room()

    def check_job_slot(self, running_titles: Iterable[str]) -> None:
        """``LimitReached`` if this visitor already runs as many background jobs as allowed."""
        titles = list(running_titles)
        if self.limits.jobs is not None and len(titles) >= self.limits.jobs:
            raise LimitReached(f"You already have a job running ({'; '.join(titles)}); this server runs "
                               f"{self.limits.jobs} at a time per visitor. Wait for it to finish, or cancel it.")

    # --- where this visitor's data may come from ------------------------------------------------------

    def dataset_roots(self, settings: Settings) -> list[Path]:
        """The folders a dataset of this visitor may lie in: the demo, their uploads, the shared downloads and
        the operator's data roots."""
        return [DEMO_DATASET, self.home, settings.home / "eden", settings.home / "eden_combined",
                *settings.data_roots]


class Visitors:
    """The visitors of one data folder (``settings.home``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.visitors_dir

    def local(self) -> Visitor:
        """Local mode's one visitor: the data folder itself."""
        return Visitor(LOCAL, self.settings.ensure_home(), self.settings.limits)

    def _visitor(self, key: str) -> Visitor:
        return Visitor(key, self.root / key, self.settings.limits, self.settings.showcase_dir)

    def _create(self, key: str) -> Visitor:
        visitor = self._visitor(key)
        visitor.home.mkdir(parents=True, exist_ok=True)
        self.touch(visitor)
        return visitor

    def create(self) -> tuple[str, Visitor]:
        """A new visitor: ``(token, visitor)``; the token goes in their URL."""
        token = new_token()
        return token, self._create(_key("token", token))

    def from_token(self, token: Optional[str]) -> Optional[Visitor]:
        """The visitor of a token this server issued and whose workspace still exists; None otherwise."""
        if not token or not _TOKEN.fullmatch(token):
            return None
        visitor = self._visitor(_key("token", token))
        return visitor if (visitor.home / SEEN_FILE).is_file() else None

    def from_identity(self, issuer: str, subject: str) -> Visitor:
        """The visitor of a logged-in user (``st.login``): the same workspace at every login."""
        return self._create(_key("user", f"{issuer}|{subject}"))

    @staticmethod
    def touch(visitor: Visitor) -> None:
        """Note that ``visitor`` was seen now (their workspace's idle time starts again)."""
        try:
            (visitor.home / SEEN_FILE).touch()
        except OSError:
            pass

    def sweep(self, busy: Iterable[str] = (), now: Optional[float] = None) -> list[str]:
        """Remove the workspaces idle for longer than ``limits.idle_hours`` (their files too), except those of
        ``busy`` visitors and those with a run still running; returns the keys removed."""
        hours = self.settings.limits.idle_hours
        if hours is None or not self.root.is_dir():
            return []
        now = time.time() if now is None else now
        busy = set(busy)
        removed = []
        for home in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                seen = (home / SEEN_FILE).stat().st_mtime
            except OSError:
                seen = home.stat().st_mtime
            if home.name in busy or now - seen < hours * 3600 or RunStore(home).list(status="running"):
                continue
            doomed = self.root / f".expired-{home.name}-{uuid.uuid4().hex[:6]}"
            try:
                os.rename(home, doomed)  # one step: a visitor never sees a half-removed workspace
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(home.name)
        return removed
