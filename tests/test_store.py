"""The store contract, on both backends: SQLite (a file) and PostgreSQL (a real server started
by the `postgres_server` fixture). Every test taking `store` runs once per backend; a few
compare the two backends' answers to the same writes, since the API's JSON must not depend on
the backend. Then the parts only one backend has: URL and password handling, schema
migrations (a file made by the SQLite code from before versioning), partitions and retention,
and an unreachable or restarted PostgreSQL."""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psycopg
import pytest

from cloud_service.config import ConfigError, StoreConfig, load_config
from cloud_service.deadletters import DeadLetter
from cloud_service.metrics import Metrics
from cloud_service.scoring import Scorer
from cloud_service.store import (
    PARTITION_SECONDS,
    AlertAlreadyAcknowledged,
    AlertNotFound,
    AlertRow,
    AssetScore,
    DriftCheck,
    DriftEventRow,
    ModelConflict,
    ModelRow,
    PredictionRow,
    Received,
    ReportUpdate,
    RolloutRow,
    ScoreWrite,
    SqliteStore,
    StatusUpdate,
    Store,
    StoreError,
    StoreUnavailable,
    TargetRequest,
    open_store,
    parse_store_url,
)
from cloud_service.store.postgres import MIGRATIONS as PG_MIGRATIONS
from cloud_service.store.postgres import PostgresStore
from cloud_service.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from contract.payloads import GatewayStatus, UpdateReport, UplinkBatch
from tests.support.postgres import PostgresServer, postgres_bindir
from tests.test_cloud_core import FEATURES, FakeModel, batch, manifest, scorer_for

DATA = Path(__file__).parent / "data"
T0 = 1_800_000_000.0


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'cloud.db'}",
                                      synchronous="NORMAL"))
    return open_store(StoreConfig(url=request.getfixturevalue("postgres_url")))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


@pytest.fixture
def both(request, tmp_path):
    """One store of each backend, for comparing their answers."""
    stores = [make_store(kind, tmp_path, request) for kind in ("sqlite", "postgresql")]
    yield stores
    for s in stores:
        s.close()


def shadow_batch(first_seq: int, n: int, version: str = "shadow-2") -> UplinkBatch:
    b = batch(first_seq, n)
    rng = np.random.default_rng(first_seq + 99)
    return b.model_copy(update={"shadow_version": version,
                                "shadow_probability": rng.uniform(0, 1, n).astype(np.float32),
                                "shadow_rul": rng.uniform(0, 90, n).astype(np.float32)})


def model_record(version: str = "m-1", sha: str = "ab" * 32) -> ModelRow:
    return ModelRow(version=version, created="2026-11-01T00:00:00Z", registered_at=T0,
                    source="upload", sha256=sha, size=10, signature="sig", path="/b",
                    tar_path="/b.tar", window=5, features=json.dumps(list(FEATURES)),
                    manifest="{}")


# -- the contract, on each backend ------------------------------------------------------------

def test_redelivered_batches_change_nothing(store):
    first = store.write_ingest([Received(batch(0, 10), 1.0)], [], [])
    # one group holding a copy of a stored batch and an overlapping one
    again = store.write_ingest([Received(batch(0, 10), 2.0), Received(batch(5, 10), 2.0)],
                               [], [])
    same_group = store.write_ingest([Received(batch(15, 5), 3.0), Received(batch(15, 5), 3.0)],
                                    [], [])
    assert [i.new_rows for i in first] == [10]
    assert [i.new_rows for i in again] == [0, 5]
    assert [i.new_rows for i in same_group] == [5, 0]
    assert [(i.key, i.first_seq, i.last_seq) for i in again] == [
        (("gw1", "a1"), 0, 9), (("gw1", "a1"), 5, 14)]
    asset = store.asset("gw1", "a1")
    assert asset is not None
    assert asset["ticks"] == 20 and asset["last_seq"] == 19 and asset["last_seen"] == 3.0
    assert asset["edge_seq"] == 19 and asset["edge_probability"] == pytest.approx(0.3)
    assert asset["edge_model_version"] == "edge-1" and asset["cloud_state"] is None
    ticks = store.ticks("gw1", "a1", -1, None, None, None, 100)
    assert [t["seq"] for t in ticks] == list(range(20))
    assert ticks[0]["edge_probability"] is None and ticks[0]["received_at"] == 1.0
    want = batch(0, 10).values[3]
    assert list(ticks[3]["values"]) == list(FEATURES)
    assert list(ticks[3]["values"].values()) == pytest.approx(want.tolist())
    # seq and time filters and the page limit
    assert [t["seq"] for t in store.ticks("gw1", "a1", 4, 8, None, None, 100)] == [5, 6, 7, 8]
    assert [t["seq"] for t in store.ticks("gw1", "a1", -1, None, T0 + 3, T0 + 6, 100)] == [3, 4, 5]
    assert [t["seq"] for t in store.ticks("gw1", "a1", 10, None, None, None, 3)] == [11, 12, 13]
    assert store.tick_seqs(("gw1", "a1"), 3, 6).tolist() == [3, 4, 5, 6]
    (gw,) = store.gateways()
    assert gw["gateway"] == "gw1" and gw["assets"] == 1 and gw["online"] is None


def test_every_complete_window_is_scored_once_in_order_even_when_a_gap_fills_late(store):
    m = manifest()
    scorer, model, _ = scorer_for(store, m, batch_max=8)
    scorer.recover()
    for b in (batch(0, 10), batch(15, 10), batch(0, 10, asset="a2")):
        scorer.notify(store.write_ingest([Received(b, 1.0)], [], []))
    scorer.drain()
    # The windows past the hole (ticks 10..14 not stored yet) wait, so the alert machine sees
    # the asset's windows in order.
    preds = {r["seq"] for r in store.predictions("gw1", "a1", -1, None, 1000)}
    assert preds == set(range(4, 10))
    scorer.notify(store.write_ingest([Received(batch(10, 5), 2.0), Received(batch(0, 10), 2.0)],
                                     [], []))
    scorer.drain()
    rows = store.predictions("gw1", "a1", -1, None, 1000)
    assert [r["seq"] for r in rows] == list(range(4, 25))
    assert rows[-1]["edge_probability"] == pytest.approx(0.3)
    assert rows[-1]["diff"] == pytest.approx(abs(rows[-1]["probability"] - 0.3))
    assert sum(model.calls) == 21 + 6
    assert [r["seq"] for r in store.predictions("gw1", "a1", 10, 12, 1000)] == [11, 12]


def test_a_restarted_scorer_resumes_alert_state_and_finds_unscored_windows(store):
    m = manifest()
    first, _, published = scorer_for(store, m)
    first.recover()
    first.notify(store.write_ingest([Received(batch(0, 12, level=3.0), 1.0)], [], []))
    first.drain()
    assert [json.loads(p)["new_state"] for _, p in published] == ["CRITICAL"]
    store.write_ingest([Received(batch(12, 8, level=3.0), 2.0)], [], [])
    (resume,) = store.owned_assets("local")  # what the next owner continues from
    assert resume.machine.state.value == "CRITICAL" and resume.scored_seq == 11
    assert resume.state_since is not None and resume.last_seq == 19 and resume.ticks == 20
    with store._write() as conn:  # the crashed replica's lease has run out
        conn.execute("UPDATE replicas SET expires_at = 0")
    second, model, published2 = scorer_for(store, m)
    second.drain()
    assert sum(model.calls) == 8 and published2 == []
    asset = store.asset("gw1", "a1")
    assert asset is not None and asset["cloud_state"] == "CRITICAL" and asset["cloud_seq"] == 19
    (alert,) = store.alerts(None, None, None, None, 0, 10)
    assert alert["new_state"] == "CRITICAL" and alert["source"] == "cloud" and alert["id"] >= 1


def test_a_second_copy_of_scores_is_ignored(store):
    store.write_ingest([Received(batch(0, 6), 1.0)], [], [])

    def write(p: float, seq: int) -> ScoreWrite:
        return ScoreWrite(
            predictions=[PredictionRow("gw1", "a1", 5, T0 + 5, p, 10.0, 0.3, 50.0, abs(p - 0.3),
                                       40.0, "cloud-1", "edge-1", T0 + 10)],
            alerts=[AlertRow("gw1", "a1", 5, "cloud", "NORMAL", "WARNING", p, 10.0, "cloud-1",
                             T0 + 5, T0 + 10)],
            assets=[AssetScore(("gw1", "a1"), seq, p, 10.0, "WARNING", T0 + 10, "cloud-1",
                               T0 + 11)])

    store.write_scores(write(0.7, 5))
    store.write_scores(write(0.9, 5))  # a replay: nothing changes
    store.write_scores(write(0.1, 4))  # an older seq never overwrites the asset's score
    (pred,) = store.predictions("gw1", "a1", -1, None, 10)
    assert pred["probability"] == pytest.approx(0.7)
    assert len(store.alerts("gw1", "a1", "WARNING", T0, 0, 10)) == 1
    assert store.alerts("gw1", "a1", "CRITICAL", None, 0, 10) == []
    asset = store.asset("gw1", "a1")
    assert asset is not None and asset["cloud_probability"] == pytest.approx(0.7)
    assert asset["cloud_seq"] == 5 and asset["scored_at"] == T0 + 11
    assert store.predicted_seqs(("gw1", "a1"), 0, 10) == {5}


def test_an_alert_is_acknowledged_once_with_who_when_and_a_note(store):
    store.write_ingest([Received(batch(0, 6), 1.0), Received(batch(0, 6, asset="a2"), 1.0)],
                       [], [])
    store.write_scores(ScoreWrite(
        alerts=[AlertRow("gw1", a, 5, "cloud", "NORMAL", new, 0.9, 10.0, "cloud-1", T0 + 5,
                         T0 + 10) for a, new in (("a1", "CRITICAL"), ("a2", "WARNING"))],
        assets=[AssetScore(("gw1", "a1"), 5, 0.9, 10.0, "CRITICAL", T0 + 10, "cloud-1", T0 + 11),
                AssetScore(("gw1", "a2"), 5, 0.6, 30.0, "WARNING", T0 + 10, "cloud-1",
                           T0 + 11)]))
    first, second = store.alerts(None, None, None, None, 0, 10)
    assert first["acknowledged_by"] is None and first["acknowledged_at"] is None
    assert first["ack_note"] is None
    done = store.acknowledge_alert(first["id"], "Ada", "bearing swapped", T0 + 60)
    assert (done["acknowledged_by"], done["acknowledged_at"], done["ack_note"]) == \
        ("Ada", T0 + 60, "bearing swapped")
    assert {k: v for k, v in done.items() if not k.startswith("ack")} == \
        {k: v for k, v in first.items() if not k.startswith("ack")}
    with pytest.raises(AlertAlreadyAcknowledged) as again:
        store.acknowledge_alert(first["id"], "Bob", "me too", T0 + 90)
    assert again.value.alert["acknowledged_by"] == "Ada" and "'Ada'" in str(again.value)
    with pytest.raises(AlertNotFound):
        store.acknowledge_alert(second["id"] + 1000, "Ada", "", T0)
    # the first acknowledgement stands, and the filter splits the two
    (kept,) = store.alerts(None, None, None, None, 0, 10, acknowledged=True)
    assert kept["id"] == first["id"] and kept["acknowledged_by"] == "Ada"
    (open_alert,) = store.alerts(None, None, None, None, 0, 10, acknowledged=False)
    assert open_alert["id"] == second["id"]
    # assets filter by their cloud alert state
    assert [a["asset"] for a in store.assets(state="CRITICAL")] == ["a1"]
    assert [a["asset"] for a in store.assets("gw1", "WARNING")] == ["a2"]
    assert store.assets("gw2", "WARNING") == [] and store.assets(state="NORMAL") == []


def test_acknowledging_at_once_lets_exactly_one_operator_win(store):
    store.write_ingest([Received(batch(0, 6), 1.0)], [], [])
    store.write_scores(ScoreWrite(alerts=[AlertRow("gw1", "a1", 5, "cloud", "NORMAL",
                                                   "CRITICAL", 0.9, 10.0, "cloud-1", T0, T0)]))
    (alert,) = store.alerts(None, None, None, None, 0, 10)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def acknowledge(name: str) -> None:
        barrier.wait()
        try:
            store.acknowledge_alert(alert["id"], name, "", T0)
            outcomes.append("won")
        except AlertAlreadyAcknowledged:
            outcomes.append("refused")

    threads = [threading.Thread(target=acknowledge, args=(f"op{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]


def test_statuses_keep_the_newest_and_reports_move_rollout_steps(store):
    newer = GatewayStatus(gateway="gw1", online=False, time=20.0)
    older = GatewayStatus(gateway="gw1", online=True, time=10.0, model_version="m1")
    store.write_ingest([], [StatusUpdate(newer, 21.0), StatusUpdate(older, 22.0)], [])
    (g,) = store.gateways()
    assert g["online"] == 0 and g["status_time"] == 20.0 and g["last_seen"] == 22.0
    assert g["assets"] == 0 and g["model_version"] is None
    store.write_ingest([], [StatusUpdate(GatewayStatus(gateway="gw1", online=True, time=30.0,
                                                       model_version="m1"), 31.0)], [])
    store.register_model(model_record("m-2"))
    store.create_rollout(RolloutRow(id="r1", version="m-2", action="install", state="active",
                                    created_at=40.0, updated_at=40.0, percent=None,
                                    requested="{}"),
                         [TargetRequest(gateway="gw1", from_version="m1", step="announced")])
    store.update_rollout("r1", "active", {"gw1": ("announced", None)})

    def report(step: str, t: float) -> ReportUpdate:
        return ReportUpdate(UpdateReport(gateway="gw1", version="m-2", step=step, time=t,
                                         rollout_id="r1"), t + 1)

    store.write_ingest([], [], [], [report("active", 50.0), report("downloading", 45.0)])
    (target,) = store.rollout_targets("r1")
    assert target["step"] == "active" and target["report_time"] == 50.0
    (g,) = store.gateways()
    assert g["model_version"] == "m-2" and g["online"] == 1
    rollout = store.rollout("r1")
    assert rollout is not None and rollout["state"] == "active"
    assert [r["id"] for r in store.rollouts()] == ["r1"] and store.rollout("nope") is None


def test_dead_letters_are_kept_and_paged(store):
    dead = [DeadLetter.of("pdm/v1/gw1/uplink", "gw1", f"bad {i}", bytes([i, 0, 255]), 4096,
                          T0 + i, "invalid" if i % 2 else "bad-topic") for i in range(5)]
    store.write_ingest([], [], dead)
    rows = store.dead_letters(None, 0, 3)
    assert [r["detail"] for r in rows] == ["bad 0", "bad 1", "bad 2"]
    assert rows[1]["payload"] == bytes([1, 0, 255]) and rows[1]["size"] == 3
    rest = store.dead_letters(None, rows[-1]["id"], 10)
    assert [r["detail"] for r in rest] == ["bad 3", "bad 4"]
    assert [r["detail"] for r in store.dead_letters("invalid", 0, 10)] == ["bad 1", "bad 3"]
    assert store.dead_letter_counts() == {"invalid": 2, "bad-topic": 3}


def test_models_register_once_and_refuse_other_content(store):
    row, created = store.register_model(model_record())
    assert created and row["version"] == "m-1" and row["window"] == 5
    again, created = store.register_model(model_record())
    assert not created and again == row
    with pytest.raises(ModelConflict, match="already registered with other content"):
        store.register_model(model_record(sha="cd" * 32))
    store.register_model(model_record("m-0"))
    assert [m["version"] for m in store.models()] == ["m-0", "m-1"] or \
        [m["version"] for m in store.models()] == ["m-1", "m-0"]
    assert store.model("nope") is None


def test_retention_removes_old_ticks_and_predictions_only(store):
    day = PARTITION_SECONDS
    old = batch(0, 6).model_copy(update={"timestamps": T0 - 3 * day + np.arange(6)})
    new = batch(6, 6).model_copy(update={"timestamps": T0 + np.arange(6, 12)})
    store.write_ingest([Received(old, 1.0), Received(new, 1.0)], [], [])
    scorer, _, _ = scorer_for(store, manifest())
    scorer.recover()
    scorer.drain()
    assert len(store.predictions("gw1", "a1", -1, None, 100)) == 8
    assert store.drop_before(T0 - day) > 0
    assert [t["seq"] for t in store.ticks("gw1", "a1", -1, None, None, None, 100)] == \
        list(range(6, 12))
    assert [p["seq"] for p in store.predictions("gw1", "a1", -1, None, 100)] == \
        list(range(6, 12))
    assert store.drop_before(T0 - day) == 0  # nothing more to remove
    store.check_writable()


def test_both_backends_answer_the_same(both):
    """The API's rows (keys, values, types) do not depend on the backend."""
    for s in both:
        s.write_ingest([Received(shadow_batch(0, 12), 1.0), Received(batch(0, 8, asset="a2"), 1.0)],
                       [StatusUpdate(GatewayStatus(gateway="gw1", online=True, time=5.0,
                                                   agent_version="0.9"), 6.0)],
                       [DeadLetter.of("pdm/v1/gw1/uplink", "gw1", "bad", b"\x00", 4096, 7.0,
                                      "invalid")])
        # several batches of one asset in one group, the newest edge score in the middle one
        no_edge = batch(20, 3, asset="a3").model_copy(
            update={"probability": np.full(3, np.nan, np.float32)})
        s.write_ingest([Received(batch(10, 5, asset="a3"), 2.0), Received(batch(15, 5, asset="a3"),
                                                                          3.0),
                        Received(no_edge, 2.5)], [], [])
        scorer, _, _ = scorer_for(s, manifest())
        scorer.recover()
        scorer.drain()
        s.register_model(model_record())
    sq, pg = both
    a3 = pg.asset("gw1", "a3")
    assert a3 is not None and a3["edge_seq"] == 19 and a3["last_seq"] == 22
    assert a3["ticks"] == 13 and a3["last_seen"] == 3.0

    clock = {"scored_at", "cloud_state_since", "published_at"}  # when each scorer ran

    def timeless(rows):
        if isinstance(rows, dict):
            return {k: (type(v) if k in clock else v) for k, v in rows.items()}
        return [timeless(r) for r in rows] if isinstance(rows, list) else rows

    def same(name: str, *args) -> None:
        a, b = getattr(sq, name)(*args), getattr(pg, name)(*args)
        assert timeless(a) == timeless(b), name
        for ra, rb in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b],
                          strict=True):
            if isinstance(ra, dict):
                assert {k: type(v) for k, v in ra.items()} == \
                    {k: type(v) for k, v in rb.items()}, name

    same("gateways")
    same("assets")
    same("assets", "gw1")
    same("assets", None, "NORMAL")
    same("asset", "gw1", "a2")
    same("ticks", "gw1", "a1", -1, None, None, None, 100)
    same("predictions", "gw1", "a1", -1, None, 100)
    same("alerts", None, None, None, None, 0, 100)
    same("models")
    same("dead_letter_counts")
    a, b = (s.dead_letters(None, 0, 10) for s in both)
    assert [{k: v for k, v in r.items() if k != "id"} for r in a] == \
        [{k: v for k, v in r.items() if k != "id"} for r in b]
    report_a, report_b = (s.shadow_report("shadow-2", 0.6, 0.5) for s in both)
    assert len(report_a) == 1 and report_a[0]["windows"] == 8  # ticks with an edge score
    assert report_a[0].keys() == report_b[0].keys()
    for key, value in report_a[0].items():
        other = report_b[0][key]
        if isinstance(value, float):
            assert other == pytest.approx(value), key
        else:
            assert other == value, key


# -- URL, password, configuration -------------------------------------------------------------

def test_store_urls_are_parsed_and_bad_ones_named():
    assert parse_store_url("sqlite:///var/cloud.db").path == Path("var/cloud.db")
    assert parse_store_url("sqlite:////srv/pdm/cloud.db").path == Path("/srv/pdm/cloud.db")
    pg = parse_store_url("postgresql://pdm@db.internal:6543/fleet?sslmode=require")
    assert (pg.host, pg.port, pg.user, pg.database) == ("db.internal", 6543, "pdm", "fleet")
    assert pg.options == (("sslmode", "require"),)
    assert pg.describe() == "PostgreSQL database 'fleet' on db.internal:6543 as pdm"
    for bad, why in (("mysql://x/y", "scheme must be sqlite or postgresql"),
                     ("postgresql://db.internal", "needs a host and a database"),
                     ("sqlite://host/x.db", "has no host"),
                     ("postgresql://u@h:99999/d", "port"),
                     ("postgresql://u:hunter2@h/d", "must not carry a password"),
                     ("postgresql://u@h/d?password=hunter2", "must not carry a password")):
        with pytest.raises(StoreError, match=why) as info:
            parse_store_url(bad)
        assert "hunter2" not in str(info.value)


def test_the_store_password_is_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("PDM_CLOUD_API_TOKEN", "t" * 20)
    monkeypatch.setenv("PDM_CLOUD_STORE__PASSWORD", "s3cret-pass")
    monkeypatch.setenv("PDM_CLOUD_STORE__URL", "postgresql://pdm@db:5432/fleet")
    cfg = load_config(None)
    assert cfg.store.url == "postgresql://pdm@db:5432/fleet"
    assert cfg.store.secret() == "s3cret-pass"
    assert "s3cret-pass" not in json.dumps(cfg.masked())
    monkeypatch.delenv("PDM_CLOUD_STORE__PASSWORD")
    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.setenv("PDM_CLOUD_STORE__PASSWORD_FILE", str(tmp_path / "pw"))
    assert load_config(None).store.secret() == "from-a-file"
    monkeypatch.setenv("PDM_CLOUD_STORE__URL", "postgresql://pdm:inline@db/fleet")
    with pytest.raises(ConfigError, match="store.url") as info:
        load_config(None)
    assert "inline" not in str(info.value)


def test_the_deprecated_store_path_still_names_a_sqlite_file(tmp_path):
    cfg = StoreConfig(path=tmp_path / "old.db")
    assert cfg.url == f"sqlite:///{tmp_path / 'old.db'}" and cfg.path is None
    with pytest.raises(ValueError, match="not both"):
        StoreConfig(path=tmp_path / "old.db", url="sqlite:///other.db")


# -- schema versions --------------------------------------------------------------------------

def test_a_sqlite_file_from_before_versioning_is_upgraded(tmp_path):
    path = tmp_path / "v1.db"
    import sqlite3

    conn = sqlite3.connect(path)
    conn.executescript((DATA / "store_sqlite_v1.sql").read_text())
    conn.close()
    older = tmp_path / "older.db"  # from before shadow runs: no shadow_scores table yet
    with sqlite3.connect(older) as conn:
        conn.executescript((DATA / "store_sqlite_v1.sql").read_text())
        conn.execute("DROP TABLE shadow_scores")
    completed = SqliteStore(older)
    completed.write_ingest([Received(shadow_batch(8, 4), 5.0)], [], [])
    assert len(completed.shadow_report("shadow-2", 0.5, 0.5)) == 1
    completed.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version() == len(SQLITE_MIGRATIONS)
        indexes = {r[0] for r in store._db().conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"idx_ticks_time", "idx_predictions_tick_time"} <= indexes
        # the old rows read as before ...
        assert [t["seq"] for t in store.ticks("gw1", "a1", -1, None, None, None, 100)] == \
            list(range(8))
        asset = store.asset("gw1", "a1")
        assert asset is not None and asset["cloud_state"] == "WARNING" and asset["ticks"] == 8
        assert [a["new_state"] for a in store.alerts(None, None, None, None, 0, 10)] == \
            ["WARNING"]
        assert store.model("m-1") is not None and store.rollout_targets("r1")[0]["step"] == \
            "announced"
        # ... and new ones go in beside them
        store.write_ingest([Received(batch(8, 4), 5.0)], [], [])
        asset = store.asset("gw1", "a1")
        assert asset is not None and asset["ticks"] == 12
        # ... and a replica takes the old asset over from its stored alert state
        scorer, _, _ = scorer_for(store, manifest())
        scorer.heartbeat()
        assert scorer.owned == {("gw1", "a1")}
        assert scorer._machines[("gw1", "a1")].state.value == "WARNING"
    finally:
        store.close()
    again = SqliteStore(path)  # a second start finds nothing to do
    assert again.schema_version() == len(SQLITE_MIGRATIONS)
    again.close()


def test_a_newer_sqlite_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    SqliteStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(StoreError, match=r"schema version 99, newer than this service knows"):
        SqliteStore(path)


def test_a_newer_postgres_schema_is_refused(postgres_url):
    PostgresStore(parse_store_url(postgres_url)).close()
    with psycopg.connect(postgres_url.replace("postgresql://", "postgresql://", 1)) as conn:
        conn.execute("INSERT INTO schema_version VALUES (7, 0)")
    newer = rf"schema version 7, newer than this service knows \({len(PG_MIGRATIONS)}\)"
    with pytest.raises(StoreError, match=newer):
        open_store(StoreConfig(url=postgres_url))


def test_replicas_starting_together_migrate_once(postgres_url):
    opened: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(open_store(StoreConfig(url=postgres_url)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 4
    # and they all write to one table set: each sees the others' ticks, partitions included
    for i, s in enumerate(opened):
        s.write_ingest([Received(batch(i * 5, 5), 1.0)], [], [])
    assert [t["seq"] for t in opened[0].ticks("gw1", "a1", -1, None, None, None, 100)] == \
        list(range(20))
    for s in opened:
        s.close()


def test_postgres_keeps_ticks_in_day_partitions(postgres_url):
    store = PostgresStore(parse_store_url(postgres_url))
    try:
        day = PARTITION_SECONDS
        first = math.floor(T0 / day)
        b = batch(0, 4).model_copy(update={"timestamps": T0 + np.array([0, day, 2 * day, 3])})
        store.write_ingest([Received(b, 1.0)], [], [])
        assert store.partitions("ticks") == [f"ticks_d{first + i}" for i in range(3)]
        assert store.partitions("predictions") == [f"predictions_d{first + i}" for i in range(3)]
        assert store.drop_before((first + 2) * day) == 4  # two days of both tables
        assert store.partitions("ticks") == [f"ticks_d{first + 2}"]
        assert [t["seq"] for t in store.ticks("gw1", "a1", -1, None, None, None, 10)] == [2]
        # a tick of a dropped day arriving late makes its partition again
        store.write_ingest([Received(b, 2.0)], [], [])
        assert len(store.ticks("gw1", "a1", -1, None, None, None, 10)) == 4
    finally:
        store.close()


# -- an unreachable or restarted PostgreSQL ---------------------------------------------------

def test_an_unreachable_database_is_named_in_one_line(tmp_path):
    from tests.support.broker import free_port

    port = free_port()
    cfg = StoreConfig(url=f"postgresql://pdm@127.0.0.1:{port}/fleet", password="hunter2-pw",
                      connect_timeout=1.5, retry_min_delay=0.2, retry_max_delay=0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store(cfg)
    took = time.monotonic() - t0
    message = str(info.value)
    assert f"PostgreSQL database 'fleet' on 127.0.0.1:{port}" in message, message
    assert "hunter2-pw" not in message and "\n" not in message
    assert 0.5 <= took < 10, took  # retried with backoff for connect_timeout, then gave up


def test_a_restarted_server_is_found_again_and_nothing_is_lost():
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="pdm-pg-restart-"))).start()
    try:
        url = server.create_database("fleet")
        store = open_store(StoreConfig(url=url, pool_timeout=2))
        store.write_ingest([Received(batch(0, 5), 1.0)], [], [])
        server.stop("immediate")  # a crash: every pooled connection is dead
        with pytest.raises(StoreError, match="PostgreSQL database 'fleet' on 127.0.0.1"):
            store.write_ingest([Received(batch(5, 5), 2.0)], [], [])
        with pytest.raises(StoreError):
            store.check_writable()
        server.start()
        deadline = time.monotonic() + 30
        while True:  # the caller's retry, as ingest does
            try:
                store.write_ingest([Received(batch(5, 5), 2.0)], [], [])
                break
            except StoreError:
                assert time.monotonic() < deadline, "the store did not come back"
                time.sleep(0.2)
        store.check_writable()
        assert [t["seq"] for t in store.ticks("gw1", "a1", -1, None, None, None, 100)] == \
            list(range(10))
        store.close()
    finally:
        server.stop("immediate")
        import shutil

        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_later_migration_is_applied_once_at_start(kind, tmp_path, request, monkeypatch):
    """How the next schema change will arrive: appended to the backend's MIGRATIONS."""
    from cloud_service.store import postgres as pg_backend
    from cloud_service.store import sqlite as sqlite_backend

    backend = sqlite_backend if kind == "sqlite" else pg_backend
    first = make_store(kind, tmp_path, request)
    first.write_ingest([Received(batch(0, 5), 1.0)], [], [])
    before = first.schema_version()  # type: ignore[attr-defined]
    first.close()
    monkeypatch.setattr(backend, "MIGRATIONS", [
        *backend.MIGRATIONS, "CREATE TABLE leases (asset text PRIMARY KEY, owner text)"])
    second = make_store(kind, tmp_path, request)
    try:
        assert second.schema_version() == before + 1  # type: ignore[attr-defined]
        assert len(second.ticks("gw1", "a1", -1, None, None, None, 10)) == 5
    finally:
        second.close()
    third = make_store(kind, tmp_path, request)  # nothing left to do
    assert third.schema_version() == before + 1  # type: ignore[attr-defined]
    third.close()


def test_the_service_applies_the_retention_setting(tmp_path):
    from cloud_service.config import CloudConfig
    from cloud_service.service import Service

    cfg = CloudConfig(api_token="t" * 20, store={"url": f"sqlite:///{tmp_path / 'c.db'}",
                                                 "retention_days": 2},
                      registry={"path": str(tmp_path / "bundles")})
    service = Service(cfg)
    try:
        old = batch(0, 5).model_copy(update={"timestamps": T0 - 3 * 86_400 + np.arange(5)})
        service.store.write_ingest([Received(old, 1.0), Received(batch(5, 5), 1.0)], [], [])
        assert service.apply_retention(now=T0) == 5
        assert [t["seq"] for t in service.store.ticks("gw1", "a1", -1, None, None, None, 10)] \
            == list(range(5, 10))
        assert "pdm_cloud_retention_removed_total 5.0" in service.metrics.render().decode()
    finally:
        service.store.close()


def test_replicas_writing_the_same_ticks_at_once_store_each_once(postgres_url):
    """Three writers (as three replicas after redeliveries) send overlapping batches of the
    same assets in different orders: every tick is stored once and each asset's tick count is
    exact. A transaction the database rolls back (a deadlock) is retried, as ingest does."""
    stores = [open_store(StoreConfig(url=postgres_url)) for _ in range(3)]
    retried: list[int] = []

    def write(i: int) -> None:
        rng = np.random.default_rng(i)
        groups = [[Received(batch(first, 10, asset=f"a{a}"), 1.0 + i)
                   for a in rng.permutation(6)] for first in rng.permutation(range(0, 200, 5))]
        for group in groups:
            while True:
                try:
                    stores[i].write_ingest(group, [], [])
                    break
                except StoreUnavailable:
                    retried.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        for a in range(6):
            ticks = stores[0].ticks("gw1", f"a{a}", -1, None, None, None, 1000)
            assert [t["seq"] for t in ticks] == list(range(205))
            asset = stores[0].asset("gw1", f"a{a}")
            assert asset is not None and asset["ticks"] == 205 and asset["last_seq"] == 204
    finally:
        for s in stores:
            s.close()


def test_retention_steps_aside_for_a_long_reader(postgres_url):
    """Dropping a partition locks the table; behind a long-running read it would make every
    writer queue too, so it gives up after a moment and the next pass drops it."""
    store = PostgresStore(parse_store_url(postgres_url))
    try:
        old = batch(0, 5).model_copy(
            update={"timestamps": T0 - 3 * PARTITION_SECONDS + np.arange(5)})
        store.write_ingest([Received(old, 1.0), Received(batch(5, 5), 1.0)], [], [])
        with psycopg.connect(postgres_url) as reader:
            reader.execute("SELECT count(*) FROM ticks").fetchone()  # holds its lock
            t0 = time.monotonic()
            assert store.drop_before(T0 - PARTITION_SECONDS) == 0  # that day kept whole
            assert time.monotonic() - t0 < 10
            store.write_ingest([Received(batch(10, 5), 2.0)], [], [])  # writers still go
        assert store.drop_before(T0 - PARTITION_SECONDS) == 2  # ticks and predictions, now
        assert [t["seq"] for t in store.ticks("gw1", "a1", -1, None, None, None, 20)] == \
            list(range(5, 15))
    finally:
        store.close()


# -- ownership across replicas (cloud_service/ownership.py), on both backends -------------------

def replica(store, m, name: str, published: list, clock=time.time, model=None) -> Scorer:
    return Scorer(store, model or FakeModel(m), m, Metrics(),
                  lambda t, p: published.append((name, json.loads(p))), max_delay=0,
                  replica=name, lease_seconds=5, clock=clock)


def test_replicas_split_the_assets_and_each_window_is_scored_by_its_owner_only(store):
    m = manifest()
    store.write_ingest([Received(batch(0, 12, asset=f"a{i}"), 1.0) for i in range(6)], [], [])
    published: list = []
    first, second = (replica(store, m, n, published) for n in ("r1", "r2"))
    first.heartbeat()
    assert len(first.owned) == 6  # alone, it takes the whole fleet
    second.heartbeat()  # joins: the first gives up half at its next heartbeat
    first.heartbeat()
    second.heartbeat()
    assert len(first.owned) == len(second.owned) == 3
    assert not first.owned & second.owned
    first.drain()
    second.drain()
    preds = store.predictions
    for i in range(6):
        assert [r["seq"] for r in preds("gw1", f"a{i}", -1, None, 100)] == list(range(4, 12))
    assert sum(first.model.calls) + sum(second.model.calls) == 6 * 8  # nothing scored twice


def test_a_replica_that_lost_an_asset_can_neither_store_nor_publish_its_scores(store):
    m = manifest()
    published: list = []
    now = [1000.0]
    stale = replica(store, m, "r1", published)
    stale.heartbeat()
    store.write_ingest([Received(batch(0, 12, level=3.0), 1.0)], [], [])
    stale.heartbeat()
    assert stale.owned == {("gw1", "a1")}
    # r1 stalls; its lease runs out and r2 takes the asset over while r1 does not know yet.
    with store._write() as conn:
        conn.execute("UPDATE replicas SET expires_at = 0 WHERE replica = 'r1'")
    fresh = replica(store, m, "r2", published, clock=lambda: now[0])
    fresh.heartbeat()
    assert fresh.owned == {("gw1", "a1")}
    stale.scan()
    stale.step()  # scores the windows it still thinks it owns: the store refuses them
    assert store.predictions("gw1", "a1", -1, None, 100) == []
    assert published == [] and ("gw1", "a1") not in stale.owned
    assert stale.metrics.scores_refused._value.get() == 8
    fresh.drain()
    assert len(store.predictions("gw1", "a1", -1, None, 100)) == 8
    assert [(n, e["new_state"]) for n, e in published] == [("r2", "CRITICAL")]


def test_a_takeover_continues_the_alert_machine_mid_dwell(store):
    """Scores asking for CRITICAL one window short of the dwell on the first replica, then one
    more on the second: the second raises the alert exactly where one replica would."""
    m = manifest()
    m = manifest(dwell=3)
    dwell = m.thresholds.dwell
    w = m.window
    published: list = []
    first = replica(store, m, "r1", published)
    first.heartbeat()
    store.write_ingest([Received(batch(0, w - 1 + dwell - 1, level=3.0), 1.0)], [], [])
    first.drain()
    assert published == []
    assert store.asset("gw1", "a1")["cloud_pending_count"] == dwell - 1
    first.stop()  # hands its assets back
    second = replica(store, m, "r2", published)
    second.heartbeat()
    store.write_ingest([Received(batch(w - 1 + dwell - 1, 1, level=3.0), 2.0)], [], [])
    second.drain()
    assert [(n, e["new_state"], e["seq"]) for n, e in published] == [
        ("r2", "CRITICAL", w - 1 + dwell - 1)]


def test_two_live_replicas_with_one_id_are_refused(store):
    from cloud_service.ownership import OwnershipError

    m = manifest()
    replica(store, m, "same", []).heartbeat()
    with pytest.raises(OwnershipError, match="another live replica uses the id 'same'"):
        replica(store, m, "same", []).heartbeat()


def test_drift_checks_are_kept_per_asset_and_events_listed_fenced_by_owner(store):
    store.write_ingest([Received(batch(0, 10), 1.0), Received(batch(0, 10, asset="a2"), 1.0)],
                       [], [])
    scorer, _, _ = scorer_for(store, manifest())
    scorer.heartbeat()  # replica "local" owns both assets now

    def check(asset: str, state: str, score: float | None, at: float) -> DriftCheck:
        return DriftCheck(gateway="gw1", asset=asset, state=state, score=score, ticks=10,
                          last_seq=9, checked_at=at, model_version="core-1",
                          detail=json.dumps({"features": [], "reason": None}))

    raised = DriftEventRow(gateway="gw1", asset="a1", kind="raised", score=3.5,
                           features=json.dumps(["s1", "s2"]), model_version="core-1", at=5.0)
    assert store.write_drift([check("a1", "drift", 3.5, 5.0), check("a2", "ok", 0.01, 5.0)],
                             [raised], owner="local") == set()
    assert store.write_drift([check("a1", "watch", 0.2, 6.0)],
                             [replace(raised, kind="cleared", score=0.2, at=6.0)],
                             owner="local") == set()
    # another replica's write for an asset it does not own changes nothing
    assert store.write_drift([check("a1", "drift", 9.0, 7.0)], [replace(raised, at=7.0)],
                             owner="other") == {("gw1", "a1")}
    a1 = store.asset_drift("gw1", "a1")
    assert a1 is not None and (a1["state"], a1["score"], a1["checked_at"]) == ("watch", 0.2, 6.0)
    assert [(d["asset"], d["state"]) for d in store.asset_drifts()] == [("a1", "watch"),
                                                                         ("a2", "ok")]
    assert store.asset_drifts("nope") == [] and store.asset_drift("gw1", "a3") is None
    events = store.drift_events(None, None, None, 0, 10)
    assert [(e["asset"], e["kind"], e["score"]) for e in events] == [("a1", "raised", 3.5),
                                                                      ("a1", "cleared", 0.2)]
    assert json.loads(events[0]["features"]) == ["s1", "s2"]
    assert [e["kind"] for e in store.drift_events("gw1", "a1", "cleared", 0, 10)] == ["cleared"]
    assert store.drift_events(None, None, None, events[0]["id"], 10) == events[1:]
    assert store.drift_events("gw1", "a2", None, 0, 10) == []
