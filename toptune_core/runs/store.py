"""The run store: every top-tuning and fine-tuning run, kept on disk.

One SQLite database (``$TOPTUNE_HOME/runs.sqlite``) holds each run's
parameters, split, metrics, timings, training curve and status; each run's
files (per-image predictions, the fitted classifier or fine-tuned weights) live
in ``$TOPTUNE_HOME/runs/<run id>/``. Writes are SQLite transactions and files
are written to a temporary name then renamed, so a crash never leaves a run
half-recorded. A run whose process died while ``running`` is shown as
``interrupted`` the next time the store is opened; the process is recognised by
its id *and* its start time, so a restarted app that happens to get the same
process id (usual in containers) still sees its predecessor's runs as
interrupted.

Models are only ever loaded from this store's own folder, never from a file a
user uploaded, and only if the file's SHA-256 matches the one recorded when the
model was saved. A full disk, a read-only folder or a damaged database gives a
one-line ``ToptuneError``; earlier runs are left as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional


from toptune_core.errors import RunNotFound, ToptuneError
from toptune_core.config import Settings
from toptune_core.runs.record import STATUSES, RunRecord
from toptune_core.system import pid_alive, process_start_token
from toptune_core.files import file_sha256

if TYPE_CHECKING:  # pandas loads only where predictions are read or written (a prediction needs none)
    import pandas as pd


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    backbone TEXT NOT NULL,
    classifier TEXT,
    dataset TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    split TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    timings TEXT NOT NULL DEFAULT '{}',
    curve TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    pid INTEGER,
    host TEXT,
    proc_start TEXT,
    model_sha256 TEXT
)
"""
# Columns added after the first release: added to older stores when they are opened.
_ADDED_COLUMNS = {"proc_start": "TEXT", "model_sha256": "TEXT"}
_JSON_FIELDS = ("params", "split", "metrics", "timings", "curve")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _recorded_sums(recorded: Optional[str]) -> dict[str, str]:
    """The recorded checksums of a run's model files: JSON ``{name: sha256}``, or (older runs) one bare
    SHA-256 of ``model.joblib``."""
    if not recorded:
        return {}
    if recorded.startswith("{"):
        return json.loads(recorded)
    return {"model.joblib": recorded}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class RunStore:
    """Runs under ``root`` (default ``$TOPTUNE_HOME``)."""

    def __init__(self, root: Optional[str | Path] = None):
        self.root = Path(root) if root else Settings.from_env().ensure_home()
        self.runs_dir = self.root / "runs"
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self._create_schema()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):
                raise self._unwritable(e) from None
            raise ToptuneError(f"The run store '{self.root / 'runs.sqlite'}' is damaged ({_one_line(e)}); nothing "
                               "was changed. Move that file aside to start a new store, or restore it from a "
                               "backup.") from None
        except OSError as e:
            raise self._unwritable(e) from None
        self.mark_interrupted()

    def _create_schema(self, wait_s: float = 30.0) -> None:
        """The table (and any column added since), once. Two processes opening a new store at the same moment can
        find it locked while the other switches it to WAL, which SQLite reports at once rather than through the
        busy timeout: try again for up to ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self._connect() as conn:
                    conn.execute(_SCHEMA)
                    self._add_missing_columns(conn)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _unwritable(self, e: BaseException) -> ToptuneError:
        return ToptuneError(f"Cannot write to the data folder '{self.root}' ({_one_line(e)}). Check that it exists, "
                            "is writable and the disk is not full, or set TOPTUNE_HOME to another folder.")

    @staticmethod
    def _add_missing_columns(conn: sqlite3.Connection) -> None:
        have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                try:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as e:  # another process added it meanwhile
                    if "duplicate column" not in str(e):
                        raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.root / "runs.sqlite", timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    def _write(self, sql: str, args: tuple) -> None:
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(sql, args)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as e:
            raise ToptuneError(f"Could not save to the run store in '{self.root}' ({_one_line(e)}); check free disk "
                               "space and permissions. Earlier runs are unchanged.") from None

    def _read(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        try:
            with self._connect() as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise ToptuneError(f"Could not read the run store in '{self.root}' ({_one_line(e)}). Check that the "
                               "data folder is readable; nothing was changed.") from None

    def _save_file(self, run_id: str, filename: str, write: Callable[[Path], None]) -> Path:
        """Write a run file atomically: ``write(tmp)``, fsync, one rename. Disk errors become ToptuneError."""
        path = self.run_dir(run_id) / filename
        tmp = path.with_name(f".{filename}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(tmp)
            _fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise ToptuneError(f"Could not save '{filename}' of run {run_id} in '{self.root}' ({_one_line(e)}); "
                               "check free disk space and permissions. Earlier runs are unchanged.") from None
        return path

    # --- writing -------------------------------------------------------------------------------

    def start(self, *, method: str, backbone: str, dataset: str, classifier: Optional[str] = None,
              params: Optional[dict] = None, pid: Optional[int] = None) -> RunRecord:
        """Record a new run as ``running`` and make its folder."""
        pid = pid or os.getpid()
        for attempt in range(100):
            # The id is the second plus 4 random hex digits: many sessions starting runs in one second can draw
            # the same one, so the folder (made atomically) decides, and a taken id is drawn again.
            run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
            try:
                (self.runs_dir / run_id).mkdir(parents=True)
                break
            except FileExistsError as e:
                if attempt == 99:
                    raise self._unwritable(e) from None
            except OSError as e:
                raise self._unwritable(e) from None
        try:
            self._write("INSERT INTO runs (id, created, method, status, backbone, classifier, dataset, params, pid,"
                        " host, proc_start) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, time.time(), method, backbone, classifier, dataset, json.dumps(params or {}),
                         pid, socket.gethostname(), process_start_token(pid)))
        except BaseException:
            shutil.rmtree(self.runs_dir / run_id, ignore_errors=True)
            raise
        return self.get(run_id)

    def update(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run (JSON fields take Python objects)."""
        if not fields:
            return
        cols, args = [], []
        for key, value in fields.items():
            cols.append(f"{key} = ?")
            args.append(json.dumps(value) if key in _JSON_FIELDS else value)
        self._write(f"UPDATE runs SET {', '.join(cols)} WHERE id = ?", (*args, run_id))

    def save_predictions(self, run_id: str, predictions: "pd.DataFrame") -> None:
        self._save_file(run_id, "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))

    def complete(self, run_id: str, *, metrics: dict, timings: dict, split: dict,
                 predictions: Optional["pd.DataFrame"] = None, curve: Optional[list] = None) -> RunRecord:
        """Store the results and mark the run ``completed`` (the files first, then one transaction)."""
        if predictions is not None:
            self.save_predictions(run_id, predictions)
        fields = dict(metrics=metrics, timings=timings, split=split, status="completed", finished=time.time())
        if curve is not None:
            fields["curve"] = curve
        self.update(run_id, **fields)
        return self.get(run_id)

    def save_model_files(self, run_id: str, save: Callable[[Path], list[str]]) -> list[str]:
        """``save(folder)`` writes a fitted model's files; they are moved into the run's folder and their
        SHA-256 recorded, so ``model_file`` can refuse a file swapped or linked in later."""
        folder = self.run_dir(run_id)
        tmp = folder / f".model-{uuid.uuid4().hex[:8]}.tmp"
        sums: dict[str, str] = {}
        try:
            tmp.mkdir()
            for name in save(tmp):
                _fsync_file(tmp / name)
                sums[name] = file_sha256(tmp / name)
                os.replace(tmp / name, folder / name)
        except OSError as e:
            raise ToptuneError(f"Could not save the model of run {run_id} in '{self.root}' ({_one_line(e)}); check "
                               "free disk space and permissions. Earlier runs are unchanged.") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.update(run_id, model_sha256=json.dumps(sums, sort_keys=True))
        return list(sums)

    def save_model(self, run_id: str, obj: Any) -> None:
        """Save a fitted Python object as the run's ``model.joblib`` (atomically, checksummed)."""
        import joblib

        def write(folder: Path) -> list[str]:
            joblib.dump(obj, folder / "model.joblib")
            return ["model.joblib"]

        self.save_model_files(run_id, write)

    def model_file(self, run_id: str, name: str) -> Path:
        """The path of a model file of a run, after checking that it is a regular file inside this store's own
        run folder whose SHA-256 is the one recorded when it was saved; a file linked in from elsewhere,
        swapped or modified since is refused."""
        run = self.get(run_id)
        link = self.run_dir(run.id) / name
        path = link.resolve()
        if link.is_symlink() or self.runs_dir.resolve() / run.id not in path.parents:
            raise ToptuneError(f"Refusing to load a model from outside the data folder: {path}")
        if not path.is_file():
            raise ToptuneError(f"Run {run.id} has no saved model (status: {run.status}); choose a completed run.")
        recorded = _recorded_sums(run.model_sha256).get(name)
        if recorded is None:
            raise ToptuneError(f"Run {run.id} has a model file that this store did not record saving; refusing to "
                               "load it. Train the model again.")
        if file_sha256(path) != recorded:
            raise ToptuneError(f"The model file of run {run.id} was changed after it was saved; refusing to load it. "
                               "Train the model again.")
        return path

    def load_model(self, run_id: str) -> Any:
        """Load a model saved as ``model.joblib``: the one place toptune unpickles, and only a file that
        ``model_file`` verified."""
        import joblib

        path = self.model_file(run_id, "model.joblib")
        return joblib.load(path)

    def finish(self, run_id: str, status: str, error: Optional[str] = None, **fields: Any) -> None:
        """Mark a run ``cancelled``, ``failed`` or ``interrupted``, keeping what it recorded so far."""
        assert status in STATUSES
        self.update(run_id, status=status, error=error, finished=time.time(), **fields)

    def mark_interrupted(self) -> int:
        """Runs left ``running`` by a process on this machine that no longer exists become ``interrupted``.

        Returns how many were marked. Where the store cannot be written (full disk), they are left for the next
        time the store is opened, so that reading it still works.
        """
        host = socket.gethostname()
        stale = [r.id for r in self.list(status="running")
                 if r.host == host and not pid_alive(r.pid, r.proc_start)]
        marked = 0
        for run_id in stale:
            try:
                self.finish(run_id, "interrupted", "The process running it stopped (crash, kill or restart).")
            except ToptuneError:  # a full disk or read-only folder: the runs can still be read; marked next time
                break
            marked += 1
        return marked

    def import_run(self, source: "RunStore", run_id: str) -> RunRecord:
        """Copy a completed run of another store (its record and its files, checksums and all) into this one."""
        run = source.get(run_id)
        if run.status != "completed":
            raise ToptuneError(f"Run {run_id} is {run.status}; only a completed run can be copied.")
        if self._read("SELECT id FROM runs WHERE id = ?", (run_id,)):
            raise ToptuneError(f"Run {run_id} is already there.")
        row = dict(source._read("SELECT * FROM runs WHERE id = ?", (run_id,))[0])
        tmp = self.runs_dir / f".import-{run_id}-{uuid.uuid4().hex[:6]}"
        try:
            shutil.copytree(source.run_dir(run_id), tmp, symlinks=True)  # a link stays a link: model_file refuses it
            os.replace(tmp, self.run_dir(run_id))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._unwritable(e) from None
        try:
            self._write(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
        except BaseException:
            shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
            raise
        return self.get(run_id)

    def delete(self, run_id: str) -> None:
        self.get(run_id)
        self._write("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.runs_dir / run_id, ignore_errors=True)

    # --- reading -------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def _record(self, row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        for key in _JSON_FIELDS:
            data[key] = json.loads(data[key]) if data[key] else ({} if key != "curve" else [])
        return RunRecord(**data, dir=self.runs_dir / data["id"])

    def get(self, run_id: str) -> RunRecord:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        row = rows[0] if rows else None
        if row is None:
            raise RunNotFound(f"No run with id '{run_id}'. List runs with: python -m toptune_core runs")
        return self._record(row)

    def list(self, *, status: Optional[str] = None, method: Optional[str] = None) -> list[RunRecord]:
        """Runs, newest first."""
        sql, args = "SELECT * FROM runs", []
        where = []
        if status:
            where.append("status = ?")
            args.append(status)
        if method:
            where.append("method = ?")
            args.append(method)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read(sql + " ORDER BY created DESC", args)
        return [self._record(r) for r in rows]

    def best(self) -> Optional[RunRecord]:
        """The completed run with the highest held-out accuracy (newest on ties), or None."""
        done = [r for r in self.list(status="completed") if r.accuracy is not None]
        return max(done, key=lambda r: (r.accuracy, r.created), default=None)
