"""The results store: one SQLite row per result cell.

A result cell is (model, checkpoint hash, data set, split, corruption,
severity, lambda setting, attack, epsilon) -> (n, correct, mean
reconstruction error, mean code density, seconds, per-example outcomes, the
robust-csc version that computed it). The identity columns form a UNIQUE key,
so a rerun skips what is done (or, with replace=True, recomputes it); every
cell is written in its own committed transaction, so a process killed at any
moment loses at most the cell in flight and never leaves half a row.

A noise curve's cell (robust_csc.evaluation.noise_curve.store_curve) names
its continuous level in the corruption, "gaussian_noise@0.1" (the float's
exact repr), with severity 0.

Schema 2 added the outcomes and code_version columns; a schema-1 store is
upgraded in place when opened (two added columns, NULL for the old rows,
which then have no per-example outcomes and an unknown version).

    with ResultsStore("results.sqlite") as store:
        key = CellKey("sdnet18", sha, "cifar10", "test", "gaussian_noise", 3)
        if not store.has(key):
            store.add(key, {"n": 10000, "correct": 8123, "seconds": 41.0})
        frame = store.to_frame(model="sdnet18")
"""

from __future__ import annotations

import json
import math
import numbers
import sqlite3
from dataclasses import astuple, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.validation import file_kind

APP_NAME = "robust-csc"
SCHEMA_VERSION = 2

# Seconds a connection waits for another process's lock before giving up.
BUSY_TIMEOUT_S = 60.0

_SQLITE_HEADER = b"SQLite format 3\x00"

KEY_COLUMNS = (
    "model",
    "checkpoint_sha256",
    "dataset",
    "split",
    "corruption",
    "severity",
    "lambda_setting",
    "attack",
    "epsilon",
)
VALUE_COLUMNS = (
    "n",
    "correct",
    "mean_recon_error",
    "mean_code_density",
    "seconds",
    "created_at",
    "extra",
    "outcomes",
    "code_version",
)
# Columns schema 2 added to schema 1 (NULL in upgraded rows).
_V2_COLUMNS = ("outcomes", "code_version")
# Values a caller passes to add(); created_at is set by the store, code_version defaults to this robust-csc's.
_REQUIRED_VALUES = ("n", "correct", "seconds")
_OPTIONAL_VALUES = ("mean_recon_error", "mean_code_density", "extra", "outcomes", "code_version")

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE cells (
    id                INTEGER PRIMARY KEY,
    model             TEXT    NOT NULL,
    checkpoint_sha256 TEXT    NOT NULL,
    dataset           TEXT    NOT NULL,
    split             TEXT    NOT NULL,
    corruption        TEXT    NOT NULL,
    severity          INTEGER NOT NULL,
    lambda_setting    TEXT    NOT NULL,
    attack            TEXT    NOT NULL,
    epsilon           REAL    NOT NULL,
    n                 INTEGER NOT NULL CHECK (n >= 0),
    correct           INTEGER NOT NULL CHECK (correct >= 0 AND correct <= n),
    mean_recon_error  REAL,
    mean_code_density REAL,
    seconds           REAL    NOT NULL,
    created_at        TEXT    NOT NULL,
    extra             TEXT    NOT NULL DEFAULT '{}',
    outcomes          TEXT,
    code_version      TEXT,
    UNIQUE (model, checkpoint_sha256, dataset, split, corruption, severity,
            lambda_setting, attack, epsilon)
);
CREATE INDEX cells_by_model ON cells (model);
"""


@dataclass(frozen=True)
class CellKey:
    """The identity of one result cell; the defaults describe a clean, unattacked cell."""

    model: str
    checkpoint_sha256: str
    dataset: str
    split: str
    corruption: str = "none"
    severity: int = 0
    lambda_setting: str = "trained"
    attack: str = "none"
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        for name in ("model", "checkpoint_sha256", "dataset", "split", "corruption", "lambda_setting", "attack"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise RobustCSCError(f"cell field {name} is {value!r}; pass a non-empty string")
        severity = self.severity
        if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 0 <= severity <= 5:
            raise RobustCSCError(f"cell severity is {severity!r}; pass an integer from 0 (clean) to 5")
        # A noise curve's cell names its continuous level in the corruption ("gaussian_noise@0.1") and has no severity.
        level_cell = "@" in self.corruption
        if (self.corruption == "none" or level_cell) != (int(severity) == 0):
            raise RobustCSCError(
                f"cell corruption {self.corruption!r} with severity {severity} does not fit; use corruption 'none' or a "
                "noise level ('gaussian_noise@0.1') with severity 0 and a named corruption with severity 1 to 5"
            )
        epsilon = self.epsilon
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon) or epsilon < 0:
            raise RobustCSCError(f"cell epsilon is {epsilon!r}; pass a finite number >= 0 (0.0 without an attack)")
        # Plain Python numbers, so numpy scalars hash and bind like the values read back.
        object.__setattr__(self, "severity", int(severity))
        object.__setattr__(self, "epsilon", float(epsilon))


def _key_from_row(row: Iterable[Any]) -> CellKey:
    return CellKey(*row)


def _check_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate what add() receives and convert it to what SQLite stores."""
    if not isinstance(values, Mapping):
        raise RobustCSCError(f"cell values are a {type(values).__name__}; pass a dict with n, correct and seconds")
    unknown = sorted(set(values) - set(_REQUIRED_VALUES) - set(_OPTIONAL_VALUES))
    if unknown:
        allowed = ", ".join(_REQUIRED_VALUES + _OPTIONAL_VALUES)
        raise RobustCSCError(f"unknown cell values {', '.join(unknown)}; pass only {allowed} (put anything else in extra)")
    missing = [name for name in _REQUIRED_VALUES if name not in values]
    if missing:
        raise RobustCSCError(f"cell values lack {', '.join(missing)}; pass n, correct and seconds")

    out: dict[str, Any] = {}
    for name in ("n", "correct"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise RobustCSCError(f"cell value {name} is {value!r}; pass an integer >= 0")
        out[name] = int(value)
    if out["correct"] > out["n"]:
        raise RobustCSCError(f"cell value correct ({out['correct']}) exceeds n ({out['n']}); pass correct <= n")
    seconds = values["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not math.isfinite(seconds) or seconds < 0:
        raise RobustCSCError(f"cell value seconds is {seconds!r}; pass a finite number >= 0")
    out["seconds"] = float(seconds)
    for name in ("mean_recon_error", "mean_code_density"):
        value = values.get(name)
        if value is None:
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RobustCSCError(f"cell value {name} is {value!r}; pass a number or None")
        # SQLite has no NaN: a NaN is stored as NULL, which reads back as None.
        out[name] = None if math.isnan(value) else float(value)
    extra = values.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise RobustCSCError(f"cell value extra is a {type(extra).__name__}; pass a dict of JSON values")
    try:
        out["extra"] = json.dumps(dict(extra), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RobustCSCError(f"cell value extra cannot be written as JSON ({err}); pass plain numbers, strings, lists and dicts") from None
    outcomes = values.get("outcomes")
    if outcomes is None:
        out["outcomes"] = None
    else:
        if not isinstance(outcomes, Outcomes):
            raise RobustCSCError(f"cell value outcomes is a {type(outcomes).__name__}; pass an Outcomes (index, correct)")
        # The per-example record must be the cell's own count: a mismatch is a bug, never stored.
        if outcomes.n != out["n"] or outcomes.count != out["correct"]:
            raise RobustCSCError(
                f"cell outcomes hold {outcomes.count} of {outcomes.n} correct but the cell says {out['correct']} of {out['n']}; "
                "pass the outcomes of the same examples"
            )
        out["outcomes"] = outcomes.to_json()
    version = values.get("code_version")
    if version is None:
        version = _code_version()
    if not isinstance(version, str) or not version:
        raise RobustCSCError(f"cell value code_version is {version!r}; pass a version string or leave it out")
    out["code_version"] = version
    return out


def _code_version() -> str:
    from robust_csc import __version__  # late: the package imports this module's users

    return __version__


_FILTERABLE = KEY_COLUMNS


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause over identity columns: a scalar means equality, a list/tuple/set means IN."""
    unknown = sorted(set(filters) - set(_FILTERABLE))
    if unknown:
        raise RobustCSCError(f"cannot filter on {', '.join(unknown)}; filter on {', '.join(_FILTERABLE)}")
    clauses: list[str] = []
    params: list[Any] = []

    def plain(item: Any) -> Any:  # numpy scalars do not bind: hand SQLite Python numbers
        if isinstance(item, numbers.Integral) and not isinstance(item, bool):
            return int(item)
        if isinstance(item, numbers.Real) and not isinstance(item, bool):
            return float(item)
        return item

    for name in KEY_COLUMNS:  # a fixed order: the SQL text does not depend on dict order
        if name not in filters:
            continue
        value = filters[name]
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
            if not items:
                clauses.append("0")
                continue
            clauses.append(f"{name} IN ({', '.join('?' * len(items))})")
            params.extend(plain(item) for item in items)
        else:
            clauses.append(f"{name} = ?")
            params.append(plain(value))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class ResultsStore:
    """The SQLite results store at path; a new path creates it.

    Use as a context manager (or call close()). One store object belongs to
    one thread; several processes may open the same file: WAL mode lets
    readers read while a writer writes, and a busy timeout makes writers wait
    for each other.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        # Columns this file has: a schema-1 store that could not be upgraded (read-only) lacks _V2_COLUMNS.
        self._values: tuple[str, ...] = VALUE_COLUMNS
        if self.path.is_dir():
            raise RobustCSCError(f"{self.path} is a folder; pass a file name for the results store, such as {self.path / 'results.sqlite'}")
        if self.path.exists() and not self.path.is_file():  # a FIFO or device: SQLite would block on it forever
            raise RobustCSCError(f"{self.path} is a {file_kind(self.path)}, not a results store file; pass a file name")
        existing = self.path.exists() and self.path.stat().st_size > 0
        if existing:
            self._refuse_foreign_file()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RobustCSCError(f"cannot create the folder for {self.path} ({err.strerror or err}); pass a path in a writable folder") from None
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise RobustCSCError(f"cannot open {self.path} ({err}); pass a path in a writable folder") from None
        self._conn = conn
        try:
            if not self._check_existing(conn):
                if existing:
                    raise RobustCSCError(f"{self.path} is not a robust-csc results store (an SQLite database without its tables); pass a new file name")
                self._create(conn)
            else:
                self._upgrade(conn)
            # A no-op for a store already in WAL mode; only done once the file is known to be ours.
            conn.execute("PRAGMA journal_mode=WAL")
        except RobustCSCError:
            self.close()
            raise
        except sqlite3.OperationalError as err:  # locked, read-only, unreadable: the file may well be ours
            self.close()
            raise RobustCSCError(
                f"cannot open the results store {self.path} ({err}); check that the file and its folder are writable and not locked"
            ) from None
        except sqlite3.DatabaseError as err:  # "file is not a database" and other damage
            self.close()
            raise RobustCSCError(f"{self.path} is not a robust-csc results store ({err}); pass a new file name") from None

    # -- opening ---------------------------------------------------------------

    def _refuse_foreign_file(self) -> None:
        """Refuse a file that is not SQLite at all, before SQLite touches it."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as err:
            raise RobustCSCError(f"cannot read {self.path} ({err.strerror or err}); check its permissions") from None
        if header != _SQLITE_HEADER:
            raise RobustCSCError(f"{self.path} is not a robust-csc results store (not an SQLite file); pass a new file name")

    def _check_existing(self, conn: sqlite3.Connection) -> bool:
        """True for a valid store of ours, False for an empty database; raise for anything else.

        Only reads: a refused file is left byte for byte as it was.
        """
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return False
        if "meta" not in tables or "cells" not in tables:
            raise RobustCSCError(f"{self.path} is not a robust-csc results store (an SQLite database without its tables); pass a new file name")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            meta = {}
        if meta.get("app") != APP_NAME:
            raise RobustCSCError(f"{self.path} is not a robust-csc results store (its meta table belongs to another program); pass a new file name")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise RobustCSCError(f"{self.path} is not a robust-csc results store (no readable schema version); pass a new file name") from None
        if version > SCHEMA_VERSION:
            raise RobustCSCError(
                f"{self.path} is a results store of schema version {version}, newer than this robust-csc's {SCHEMA_VERSION}; upgrade robust-csc"
            )
        return True

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        return int(dict(conn.execute("SELECT key, value FROM meta").fetchall())["schema_version"])

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Bring a schema-1 store to schema 2 (two added columns), in one transaction.

        A store that cannot be written (a read-only file or folder) stays as it
        is and is read as schema 1: its cells have no outcomes and no version.
        """
        if self._schema_version(conn) >= SCHEMA_VERSION:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            self._values = tuple(c for c in VALUE_COLUMNS if c not in _V2_COLUMNS)
            return
        try:
            if self._schema_version(conn) < SCHEMA_VERSION:  # another process may have upgraded it meanwhile
                present = {row[1] for row in conn.execute("PRAGMA table_info(cells)")}
                for column in _V2_COLUMNS:
                    if column not in present:
                        conn.execute(f"ALTER TABLE cells ADD COLUMN {column} TEXT")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except sqlite3.OperationalError:  # read-only: the write failed, nothing changed
            conn.execute("ROLLBACK")
            self._values = tuple(c for c in VALUE_COLUMNS if c not in _V2_COLUMNS)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _create(self, conn: sqlite3.Connection) -> None:
        """Create the tables of an empty database, or accept the store another process just created.

        The tables are created in rollback-journal mode, so the file stays
        empty until one commit writes them all; another process opening the
        same new path sees either an empty file or the whole schema.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                conn.execute("ROLLBACK")
                if not self._check_existing(conn):  # pragma: no cover - tables vanished meanwhile
                    raise RobustCSCError(f"{self.path} changed while it was being opened; open it again")
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("app", APP_NAME), ("schema_version", str(SCHEMA_VERSION))],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- life cycle --------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RobustCSCError(f"the results store {self.path} is closed; open it again with ResultsStore(path)")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # -- cells -------------------------------------------------------------------

    @staticmethod
    def _key(cell_key: CellKey) -> tuple:
        if not isinstance(cell_key, CellKey):
            raise RobustCSCError(f"a cell key is a {type(cell_key).__name__}; pass a CellKey(model, checkpoint_sha256, dataset, split, ...)")
        return astuple(cell_key)

    _KEY_MATCH = " AND ".join(f"{name} = ?" for name in KEY_COLUMNS)

    def has(self, cell_key: CellKey) -> bool:
        """Whether the cell is stored."""
        row = self._db.execute(f"SELECT 1 FROM cells WHERE {self._KEY_MATCH}", self._key(cell_key)).fetchone()
        return row is not None

    def get(self, cell_key: CellKey) -> dict[str, Any] | None:
        """The stored cell as a dict (identity and values, extra decoded, outcomes as JSON text or None), or None."""
        columns = KEY_COLUMNS + self._values
        row = self._db.execute(
            f"SELECT {', '.join(columns)} FROM cells WHERE {self._KEY_MATCH}", self._key(cell_key)
        ).fetchone()
        if row is None:
            return None
        out = dict(zip(columns, row))
        out["extra"] = json.loads(out["extra"])
        for column in _V2_COLUMNS:
            out.setdefault(column, None)
        return out

    def outcomes(self, cell_key: CellKey) -> Outcomes | None:
        """The cell's per-example outcomes; None for a missing cell or one stored without them."""
        row = self.get(cell_key)
        if row is None or row["outcomes"] is None:
            return None
        return Outcomes.from_json(row["outcomes"], f"the stored cell {cell_key}")

    def add(self, cell_key: CellKey, values: Mapping[str, Any], *, replace: bool = False) -> bool:
        """Write one cell and commit it; True if written, False if it was already there (and not replaced).

        Without replace an existing cell is never changed: the first values
        stay.  With replace (recomputing a cell, or the worst case of attacks
        growing with a new attack) the stored values are overwritten in one
        statement.  values holds n, correct, seconds and optionally
        mean_recon_error, mean_code_density, extra (a dict of JSON values),
        outcomes (an Outcomes of the same n and count) and code_version
        (default: this robust-csc's version).
        """
        key = self._key(cell_key)
        checked = _check_values(values)
        if self._values != VALUE_COLUMNS:
            raise RobustCSCError(f"{self.path} is a schema-1 results store that could not be upgraded (read-only); make it writable or use a new store")
        checked["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        columns = KEY_COLUMNS + VALUE_COLUMNS
        row = key + tuple(checked[name] for name in VALUE_COLUMNS)
        conflict = "DO NOTHING"
        if replace:
            conflict = f"({', '.join(KEY_COLUMNS)}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in VALUE_COLUMNS)
        # Autocommit mode: this one statement is one transaction, committed on return.
        try:
            cursor = self._db.execute(
                f"INSERT INTO cells ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT {conflict}",
                row,
            )
        except sqlite3.OperationalError as err:  # locked past the busy timeout, disk full, read-only
            raise RobustCSCError(
                f"could not write a cell to {self.path} ({err}); check that the disk is not full, the file is writable "
                "and no other process keeps the store locked"
            ) from None
        return cursor.rowcount == 1

    def done_keys(self, **filters: Any) -> set[CellKey]:
        """The keys of the stored cells matching filters (identity columns; a list means any of)."""
        where, params = _where(filters)
        rows = self._db.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM cells{where}", params).fetchall()
        return {_key_from_row(row) for row in rows}

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM cells").fetchone()[0]

    def models(self) -> list[str]:
        """The model names in the store, sorted."""
        return [row[0] for row in self._db.execute("SELECT DISTINCT model FROM cells ORDER BY model")]

    def to_frame(self, **filters: Any):
        """The matching cells as a pandas DataFrame, one row per cell, with accuracy = correct / n.

        extra and outcomes stay JSON text (Outcomes.from_json reads the latter;
        None for a cell stored without them). Rows are ordered by insertion.
        """
        import pandas as pd  # only here: opening and filling a store needs no pandas

        columns = KEY_COLUMNS + self._values
        where, params = _where(filters)
        rows = self._db.execute(f"SELECT {', '.join(columns)} FROM cells{where} ORDER BY id", params).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=list(columns))
        for column in _V2_COLUMNS:
            if column not in frame:
                frame[column] = None
        frame = frame[list(KEY_COLUMNS + VALUE_COLUMNS)]
        frame = frame.astype(
            {
                "severity": "int64",
                "epsilon": "float64",
                "n": "int64",
                "correct": "int64",
                "mean_recon_error": "float64",
                "mean_code_density": "float64",
                "seconds": "float64",
            }
        )
        n = frame["n"].astype("float64")
        frame["accuracy"] = (frame["correct"] / n).where(n > 0)
        return frame


def open_store(store: "ResultsStore | str | Path") -> tuple[ResultsStore, bool]:
    """(the store, whether it was opened here and so must be closed by the caller)."""
    if isinstance(store, ResultsStore):
        return store, False
    if isinstance(store, (str, Path)):
        return ResultsStore(store), True
    raise RobustCSCError(f"store is a {type(store).__name__}; pass a ResultsStore or the path of a results file")


__all__ = ["APP_NAME", "SCHEMA_VERSION", "KEY_COLUMNS", "VALUE_COLUMNS", "CellKey", "ResultsStore", "open_store"]

