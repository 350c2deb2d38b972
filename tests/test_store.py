"""The SQLite results store: round trip, uniqueness, resume, crash safety, refusing foreign files."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import fields

import numpy as np
import pytest

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import KEY_COLUMNS, SCHEMA_VERSION, CellKey, ResultsStore

SHA = "ab" * 32


def key(corruption="none", severity=0, model="sdnet18", **kw):
    return CellKey(model, SHA, "cifar10", "test", corruption, severity, **kw)


def values(n=100, correct=90, **kw):
    return {"n": n, "correct": correct, "seconds": 1.5, **kw}


def test_cellkey_fields_are_the_key_columns():
    assert tuple(f.name for f in fields(CellKey)) == KEY_COLUMNS
    clean = CellKey("m", SHA, "cifar10", "test")
    assert (clean.corruption, clean.severity, clean.lambda_setting, clean.attack, clean.epsilon) == (
        "none", 0, "trained", "none", 0.0,
    )


def test_round_trip(tmp_path):
    path = tmp_path / "results.sqlite"
    k = key("gaussian_noise", 3, lambda_setting="0.3")
    with ResultsStore(path) as store:
        assert not store.has(k)
        assert store.get(k) is None
        assert store.add(k, values(n=200, correct=150, mean_recon_error=0.25, mean_code_density=0.1, extra={"batch": 64}))
        assert store.has(k)
    with ResultsStore(path) as store:  # reopened: the cell was committed
        row = store.get(k)
        assert row["model"] == "sdnet18" and row["corruption"] == "gaussian_noise" and row["severity"] == 3
        assert row["lambda_setting"] == "0.3" and row["attack"] == "none" and row["epsilon"] == 0.0
        assert (row["n"], row["correct"]) == (200, 150)
        assert row["mean_recon_error"] == 0.25 and row["mean_code_density"] == 0.1
        assert row["seconds"] == 1.5 and row["extra"] == {"batch": 64}
        assert row["created_at"].endswith("+00:00")
        assert store.models() == ["sdnet18"]
        frame = store.to_frame()
        assert len(frame) == 1
        assert frame.loc[0, "accuracy"] == 0.75
        assert list(frame.columns[:9]) == list(KEY_COLUMNS)


def test_optional_values_and_nan_are_null(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add(key(), values(mean_recon_error=float("nan")))
        row = store.get(key())
        assert row["mean_recon_error"] is None and row["mean_code_density"] is None and row["extra"] == {}
        assert store.to_frame()["mean_recon_error"].isna().all()


def test_adding_a_cell_twice_keeps_the_first_values(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.add(key("fog", 2), values(correct=40)) is True
        assert store.add(key("fog", 2), values(correct=99)) is False
        assert len(store) == 1
        assert store.get(key("fog", 2))["correct"] == 40
        # numpy-like scalars and an equal float epsilon name the same cell
        assert store.add(CellKey("sdnet18", SHA, "cifar10", "test", "fog", np.int64(2), epsilon=0), values()) is False
        # any identity column that differs makes another cell
        assert store.add(key("fog", 2, lambda_setting="0.5"), values(correct=50)) is True
        assert store.add(key("fog", 2, attack="pgd", epsilon=8 / 255), values(correct=1)) is True
        assert store.add(key("fog", 2, model="resnet18"), values(correct=60)) is True
        assert len(store) == 4
        assert store.models() == ["resnet18", "sdnet18"]


def test_done_keys_and_filters_for_resume(tmp_path):
    wanted = [key()] + [key(c, s) for c in ("fog", "snow") for s in range(1, 6)]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for k in wanted[:4]:
            store.add(k, values())
        store.add(key("fog", 1, model="resnet18"), values())
        done = store.done_keys(model="sdnet18")
        assert done == set(wanted[:4])
        todo = [k for k in wanted if k not in done]
        assert todo == wanted[4:]
        assert store.done_keys(corruption=["fog", "none"], model="sdnet18") == set(wanted[:4])
        assert store.done_keys(model=[]) == set()
        assert store.done_keys(model="sdnet18", severity=np.int64(1), corruption=("fog",)) == {key("fog", 1)}
        assert len(store.done_keys()) == 5
        frame = store.to_frame(model="resnet18")
        assert list(frame["model"]) == ["resnet18"]
        assert store.to_frame(model="nobody").empty
        with pytest.raises(RobustCSCError, match="cannot filter on accuracy"):
            store.to_frame(accuracy=0.5)


def test_bad_keys_and_values_are_refused(tmp_path):
    with pytest.raises(RobustCSCError, match="severity"):
        key("fog", 0)
    with pytest.raises(RobustCSCError, match="severity"):
        key("none", 2)
    with pytest.raises(RobustCSCError, match="severity"):
        key("fog", 6)
    with pytest.raises(RobustCSCError, match="epsilon"):
        key(attack="pgd", epsilon=-1.0)
    with pytest.raises(RobustCSCError, match="model"):
        CellKey("", SHA, "cifar10", "test")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(RobustCSCError, match="exceeds n"):
            store.add(key(), values(n=10, correct=11))
        with pytest.raises(RobustCSCError, match="lack seconds"):
            store.add(key(), {"n": 1, "correct": 1})
        with pytest.raises(RobustCSCError, match="unknown cell values accuracy"):
            store.add(key(), values(accuracy=0.9))
        with pytest.raises(RobustCSCError, match="JSON"):
            store.add(key(), values(extra={"f": object()}))
        with pytest.raises(RobustCSCError, match="CellKey"):
            store.add(("sdnet18",), values())
        assert len(store) == 0


def test_a_reader_reads_while_a_writer_holds_the_write_lock(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as writer, ResultsStore(path) as reader:
        writer.add(key(), values())
        assert writer._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        writer._conn.execute("BEGIN IMMEDIATE")
        writer._conn.execute("DELETE FROM cells")  # uncommitted
        assert reader.has(key())  # not blocked, and sees only committed data
        writer._conn.execute("ROLLBACK")


def test_closed_store_says_so(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.close()
    with pytest.raises(RobustCSCError, match="closed"):
        store.has(key())


# -- refusing what is not ours, leaving it untouched ------------------------------


def _refused(path, match):
    before = path.read_bytes()
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(RobustCSCError, match=match) as info:
        ResultsStore(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings  # no -wal / -shm left behind
    return message


def test_a_text_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("model,accuracy\nsdnet18,0.95\n")
    message = _refused(path, "is not a robust-csc results store")
    assert message.endswith("pass a new file name")


def test_an_unrelated_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('ada')")
    conn.commit()
    conn.close()
    _refused(path, "is not a robust-csc results store")


def test_an_empty_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "empty.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")  # writes the header: a real, table-less database
    conn.commit()
    conn.close()
    assert path.stat().st_size > 0
    _refused(path, "is not a robust-csc results store")


def test_a_foreign_meta_table_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("CREATE TABLE cells (x)")
    conn.execute("INSERT INTO meta VALUES ('app', 'something-else')")
    conn.commit()
    conn.close()
    _refused(path, "is not a robust-csc results store")


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.add(key(), values())
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    message = _refused(path, "upgrade robust-csc")
    assert f"schema version {SCHEMA_VERSION + 1}" in message


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(RobustCSCError, match="is a folder"):
        ResultsStore(tmp_path)


def test_a_new_path_creates_the_store_and_its_folders(tmp_path):
    path = tmp_path / "runs" / "a" / "results.sqlite"
    with ResultsStore(path) as store:
        assert len(store) == 0 and store.models() == []
        assert store.to_frame().empty
    conn = sqlite3.connect(path)
    assert dict(conn.execute("SELECT key, value FROM meta")) == {"app": "robust-csc", "schema_version": str(SCHEMA_VERSION)}
    conn.close()
    empty = tmp_path / "touched.sqlite"
    empty.write_bytes(b"")  # an empty file (a fresh temporary file) becomes a store
    with ResultsStore(empty) as store:
        assert store.add(key(), values())


# -- a process killed with SIGKILL in the middle of a run -----------------------------

_WORKER = textwrap.dedent(
    """
    import sys, time
    from robust_csc.evaluation.store import CellKey, ResultsStore

    path, total, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cells = [CellKey("sdnet18", "ab" * 32, "cifar10", "test", "gaussian_noise", 1 + i % 5, lambda_setting=str(i // 5))
             for i in range(total)]
    added = 0
    with ResultsStore(path) as store:
        done = store.done_keys(model="sdnet18")
        for i, k in enumerate(cells):
            if k in done:
                continue
            added += store.add(k, {"n": 1000 + i, "correct": i, "seconds": 0.01, "extra": {"i": i}})
            time.sleep(pause)
    print(added)
    """
)


def _spawn(path, total, pause):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(path), str(total), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_midway_loses_nothing_committed_and_a_rerun_completes(tmp_path):
    path = tmp_path / "results.sqlite"
    total = 400
    with ResultsStore(path):  # created up front, so the reader below can poll it
        pass
    worker = _spawn(path, total, pause=0.01)
    deadline = time.monotonic() + 120
    with ResultsStore(path) as reader:  # reads while the worker writes (WAL)
        try:
            while len(reader) < 25:
                assert worker.poll() is None, worker.stderr.read()
                assert time.monotonic() < deadline, "the worker wrote too slowly"
                time.sleep(0.01)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    assert worker.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with ResultsStore(path) as store:
        survived = len(store)
        assert 25 <= survived < total
        frame = store.to_frame()
        assert not frame.duplicated(list(KEY_COLUMNS)).any()
        # every surviving row is whole: the values match what cell i was given
        for _, row in frame.iterrows():
            i = json.loads(row["extra"])["i"]
            assert (row["n"], row["correct"], row["seconds"]) == (1000 + i, i, 0.01)
        before = {k: store.get(k) for k in store.done_keys()}

    rerun = _spawn(path, total, pause=0.0)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert int(out) == total - survived  # done cells were skipped

    with ResultsStore(path) as store:
        assert len(store) == total
        frame = store.to_frame()
        assert not frame.duplicated(list(KEY_COLUMNS)).any()
        assert sorted(json.loads(e)["i"] for e in frame["extra"]) == list(range(total))
        assert all(store.get(k) == row for k, row in before.items())  # first values kept


def test_processes_creating_and_filling_one_new_store_together(tmp_path):
    path = tmp_path / "new" / "results.sqlite"  # nobody has created it yet
    total = 60
    workers = [_spawn(path, total, pause=0.0) for _ in range(3)]
    added = 0
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        added += int(out)
    assert added == total  # each cell inserted by exactly one process
    with ResultsStore(path) as store:
        assert len(store) == total
        assert not store.to_frame().duplicated(list(KEY_COLUMNS)).any()


# -- schema 2: per-example outcomes, the code version, replacing, upgrading schema 1 --------------

_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cells (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, dataset TEXT NOT NULL,
    split TEXT NOT NULL, corruption TEXT NOT NULL, severity INTEGER NOT NULL, lambda_setting TEXT NOT NULL,
    attack TEXT NOT NULL, epsilon REAL NOT NULL, n INTEGER NOT NULL CHECK (n >= 0),
    correct INTEGER NOT NULL CHECK (correct >= 0 AND correct <= n), mean_recon_error REAL, mean_code_density REAL,
    seconds REAL NOT NULL, created_at TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}',
    UNIQUE (model, checkpoint_sha256, dataset, split, corruption, severity, lambda_setting, attack, epsilon)
);
INSERT INTO meta VALUES ('app', 'robust-csc'), ('schema_version', '1');
INSERT INTO cells (model, checkpoint_sha256, dataset, split, corruption, severity, lambda_setting, attack, epsilon,
                   n, correct, seconds, created_at, extra)
VALUES ('sdnet18', '%s', 'cifar10', 'test', 'none', 0, 'trained', 'none', 0.0, 100, 90, 1.5, '2026-01-01T00:00:00+00:00', '{}');
""" % SHA


def _schema_1_store(path):
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_1)
    conn.execute("PRAGMA journal_mode=WAL")  # as schema-1 robust-csc left its stores
    conn.close()


def test_outcomes_and_version_round_trip(tmp_path):
    from robust_csc import __version__
    from robust_csc.evaluation.outcomes import Outcomes

    flags = np.zeros(100, dtype=bool)
    flags[:90] = True
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add(key(), values(outcomes=Outcomes.first(flags)))
        row = store.get(key())
        assert row["code_version"] == __version__
        back = store.outcomes(key())
        assert np.array_equal(back.correct, flags) and np.array_equal(back.index, np.arange(100))
        store.add(key("fog", 1), values())  # outcomes are optional
        assert store.outcomes(key("fog", 1)) is None
        assert store.to_frame()["code_version"].tolist() == [__version__] * 2


def test_outcomes_must_match_the_cell_counts(tmp_path):
    from robust_csc.evaluation.outcomes import Outcomes

    with ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(RobustCSCError, match="outcomes hold 89 of 100"):
            store.add(key(), values(outcomes=Outcomes.first(np.arange(100) < 89)))
        assert len(store) == 0


def test_replace_overwrites_a_cell_and_plain_add_does_not(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add(key(), values(correct=10, code_version="0.1.0"))
        assert store.add(key(), values(correct=20)) is False
        assert store.get(key())["correct"] == 10
        assert store.add(key(), values(correct=30), replace=True) is True
        row = store.get(key())
        assert row["correct"] == 30 and row["code_version"] != "0.1.0"
        assert len(store) == 1


def test_a_schema_1_store_is_upgraded_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    _schema_1_store(path)
    with ResultsStore(path) as store:
        row = store.get(key())
        assert (row["n"], row["correct"], row["outcomes"], row["code_version"]) == (100, 90, None, None)
        store.add(key("fog", 1), values())
        assert len(store) == 2
    conn = sqlite3.connect(path)
    assert dict(conn.execute("SELECT key, value FROM meta"))["schema_version"] == str(SCHEMA_VERSION)
    conn.close()


def test_a_read_only_schema_1_store_is_read_as_it_is(tmp_path, monkeypatch):
    import robust_csc.evaluation.store as store_module

    path = tmp_path / "old.sqlite"
    _schema_1_store(path)
    before = path.read_bytes()
    connect = sqlite3.connect
    # Root ignores file modes, so the file is opened read-only the way SQLite itself offers.
    monkeypatch.setattr(store_module.sqlite3, "connect", lambda p, **kw: connect(f"file:{p}?mode=ro", uri=True, **kw))
    with ResultsStore(path) as store:
        frame = store.to_frame()
        assert frame["outcomes"].isna().all() and len(frame) == 1
        with pytest.raises(RobustCSCError, match="could not be upgraded"):
            store.add(key("fog", 1), values())
    assert path.read_bytes() == before
