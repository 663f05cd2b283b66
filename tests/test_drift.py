"""Drift core (contract/drift.py) and the converter's training statistics, on real C-MAPSS data.

The FD001 training statistics the cloud tests use are committed (tests/data/
fd001_training_stats.json, made by `converter.data.training_stats` from the training split of
train_FD001); a test below rebuilds them from the full data set where it is present.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cloud_service.drift import DriftOptions
from cloud_service.metrics import Metrics
from cloud_service.scoring import Scorer
from cloud_service.store import Received, SqliteStore
from contract import codec, topics
from contract.bundle import generate_keypair
from contract.cmapss import SENSORS
from contract.drift import (
    DriftError,
    DriftSettings,
    DriftState,
    assess,
    bin_shares,
    crossing,
    describe_feature,
    describe_training,
    psi,
)
from contract.manifest import FeatureBins, Manifest, TrainingStats
from contract.payloads import UplinkBatch
from contract.preprocess import Normaliser
from converter.data import (
    AGE,
    choose_features,
    load_cmapss,
    scaling_for,
    split_assets,
    training_stats,
)
from tests import test_web
from tests.conftest import DEFAULT_BUNDLE
from tests.support.broker import Mosquitto
from tests.support.bundles import variant
from tests.test_cloud_core import FakeModel
from tests.test_cloud_service import Publisher, Running, cloud_config, wait_until
from tests.test_web import Visit

# The web tests' browser fixture (Debian's chromium through playwright), under this name.
shared_browser = test_web.browser
REPO = Path(__file__).resolve().parent.parent
STATS_FILE = REPO / "tests" / "data" / "fd001_training_stats.json"
FD002_EXCERPT = REPO / "data" / "cmapss" / "test_FD002_units1-5.txt"
FD001_TEST = REPO / "data" / "cmapss" / "test_FD001.txt"
# The default bundle's manifest without its training statistics, as bundles written before
# drift checks are; tests that need statistics add them.
MANIFEST = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
MANIFEST.pop("training_stats", None)
FEATURES: list[str] = MANIFEST["features"]
# what an FD002 engine drifts in from the FD001 model: every sensor, not the age (FD002's
# engines run about as long as FD001's)
SENSORS_ONLY = [f for f in FEATURES if f != AGE]
SETTINGS = DriftSettings()
WINDOW = 200  # recent ticks per asset, the cloud's default


def model_inputs(path: Path) -> dict[str, np.ndarray]:
    """Each engine's rows of a C-MAPSS file, the default model's features only."""
    return load_cmapss(path, with_age=True).select(FEATURES).series


def fd001_stats() -> TrainingStats:
    return TrainingStats.model_validate_json(STATS_FILE.read_text())


def recent_reports(path: Path, stats: TrainingStats) -> dict[str, object]:
    return {asset: assess(rows[-WINDOW:], FEATURES, stats, SETTINGS)
            for asset, rows in model_inputs(path).items()}


def test_fd001_test_engines_do_not_drift(data_dir):
    reports = recent_reports(data_dir / "test_FD001.txt", fd001_stats())
    judged = {a: r for a, r in reports.items() if r.state is not DriftState.UNAVAILABLE}
    assert len(judged) >= 90  # engines with at least min_ticks cycles
    drifting = {a: (r.score, r.drifting) for a, r in judged.items()
                if r.state is DriftState.DRIFT}
    assert not drifting
    scores = np.array([r.score for r in judged.values()])
    assert np.median(scores) < SETTINGS.watch  # most are well inside, not just under the line


def test_fd002_engines_drift_from_the_fd001_model():
    """The committed excerpt (five FD002 test engines): six operating conditions the FD001
    model never saw; every sensor of every engine is far past the drift threshold (not the
    age: FD002's engines run about as long as FD001's)."""
    reports = recent_reports(FD002_EXCERPT, fd001_stats())
    assert len(reports) == 5
    for asset, report in reports.items():
        assert report.state is DriftState.DRIFT, asset
        assert report.score is not None and report.score > 10 * SETTINGS.drift
        assert report.drifting == SENSORS_ONLY


def test_every_fd002_test_engine_drifts(train_data_dir):
    reports = recent_reports(train_data_dir / "test_FD002.txt", fd001_stats())
    judged = [r for r in reports.values() if r.state is not DriftState.UNAVAILABLE]
    assert len(judged) > 200
    assert all(r.state is DriftState.DRIFT for r in judged)


def test_committed_statistics_are_what_the_converter_computes(train_data_dir):
    train = load_cmapss(train_data_dir / "train_FD001.txt", with_age=True)
    kept, _ = split_assets(train.assets, 0.2, 0)  # the split `train` makes with seed 0
    fleet = train.subset(kept)
    assert choose_features(fleet) == FEATURES
    assert training_stats(fleet.select(FEATURES)) == fd001_stats()


def test_few_ticks_are_unavailable_not_ok():
    rows = model_inputs(FD002_EXCERPT)["1"][:SETTINGS.min_ticks - 1]
    report = assess(rows, FEATURES, fd001_stats(), SETTINGS)
    assert report.state is DriftState.UNAVAILABLE and report.score is None
    assert "fewer than the 50 needed" in (report.reason or "")


def test_bins_put_repeated_values_in_one_bin_in_training_and_later():
    values = np.array([1.0] * 90 + [2.0] * 10)
    bins = describe_feature(values, (0.5, 0.95))
    assert bins.edges == [1.0, 2.0]
    assert bins.expected == [0.0, 0.9, 0.1]
    assert bin_shares(np.array([1.0, 2.0, 3.0, 0.5]), bins.edges).tolist() == [0.25, 0.25, 0.5]
    assert psi(bins.expected, bin_shares(values, bins.edges)) == 0.0


def test_one_shifted_feature_shows_in_its_state_not_the_assets():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20_000, 4))
    stats = describe_training(train)
    recent = rng.normal(size=(200, 4))
    recent[:, 2] += 5.0  # one sensor far off (a calibration fault, say)
    report = assess(recent, list("abcd"), stats, SETTINGS)
    assert [f.state for f in report.features] == [DriftState.OK, DriftState.OK,
                                                  DriftState.DRIFT, DriftState.OK]
    assert report.state is DriftState.OK  # the asset drifts when half its inputs do
    recent[:, 0] += 5.0
    assert assess(recent, list("abcd"), stats, SETTINGS).state is DriftState.DRIFT


def test_a_drifting_asset_clears_only_below_the_watch_threshold():
    rng = np.random.default_rng(2)
    stats = describe_training(rng.normal(size=(20_000, 2)))
    recent = rng.normal(size=(400, 2))
    recent[:20] = 50.0  # 5 % of the ticks far out: a score between watch and drift
    report = assess(recent, ["a", "b"], stats, SETTINGS)
    assert SETTINGS.watch <= (report.score or 0) < SETTINGS.drift
    assert report.state is DriftState.WATCH
    held = assess(recent, ["a", "b"], stats, SETTINGS, previous=DriftState.DRIFT)
    assert held.state is DriftState.DRIFT and held.score == report.score
    assert crossing(DriftState.DRIFT, held.state) is None
    calm = assess(rng.normal(size=(400, 2)), ["a", "b"], stats, SETTINGS,
                  previous=DriftState.DRIFT)
    assert calm.state is DriftState.OK and crossing(DriftState.DRIFT, calm.state) == "cleared"
    assert crossing(None, DriftState.DRIFT) == "raised"
    assert crossing(DriftState.WATCH, DriftState.DRIFT) == "raised"
    assert crossing(DriftState.DRIFT, DriftState.UNAVAILABLE) is None
    assert crossing(DriftState.OK, DriftState.WATCH) is None


def test_regimes_weigh_each_regimes_psi_by_its_ticks():
    """Per regime bins: a regime mix unlike training is no drift; a shift within one regime
    counts in proportion to the ticks spent in it."""
    rng = np.random.default_rng(1)
    train = np.concatenate([rng.normal(0, 1, (10_000, 1)), rng.normal(100, 1, (10_000, 1))])
    regime = np.repeat([0, 1], 10_000)
    stats = describe_training(train, regime, regimes=2)
    recent = np.concatenate([rng.normal(0, 1, (180, 1)), rng.normal(100, 1, (20, 1))])
    of = np.repeat([0, 1], [180, 20])
    report = assess(recent, ["x"], stats, SETTINGS, of)
    assert report.state is DriftState.OK and report.regime_ticks == [180, 20]
    shifted = recent.copy()
    shifted[of == 1] += 10
    report = assess(shifted, ["x"], stats, SETTINGS, of)
    feature = report.features[0]
    assert feature.regime_psi[0] == pytest.approx(
        assess(recent[of == 0], ["x"], describe_training(train[regime == 0]),
               DriftSettings(min_ticks=1)).score)
    assert feature.psi == pytest.approx((180 * feature.regime_psi[0]
                                         + 20 * feature.regime_psi[1]) / 200, rel=1e-5)
    with pytest.raises(DriftError, match="each tick needs its regime"):
        assess(recent, ["x"], stats, SETTINGS)


def test_manifest_refuses_inconsistent_statistics_and_loads_without_them():
    doc = dict(MANIFEST)
    assert Manifest.model_validate(doc).training_stats is None  # older bundles load
    doc["training_stats"] = fd001_stats().model_dump()
    assert Manifest.model_validate(doc).training_stats == fd001_stats()
    doc["training_stats"]["regimes"][0]["features"].pop()
    n = len(FEATURES)
    with pytest.raises(ValidationError, match=f"training_stats has {n - 1} features for {n}"):
        Manifest.model_validate(doc)
    with pytest.raises(ValidationError, match="expected shares"):
        FeatureBins(edges=[1.0], expected=[0.5, 0.6])
    with pytest.raises(ValidationError, match="must not decrease"):
        FeatureBins(edges=[2.0, 1.0], expected=[0.2, 0.3, 0.5])
    with pytest.raises(DriftError, match="watch <= drift"):
        DriftSettings(watch=0.3, drift=0.2)


# -- the cloud: checks between scoring batches, stored, events, metrics -------------------------

def cmapss_batch(asset: str, rows: np.ndarray, first_seq: int) -> UplinkBatch:
    n = len(rows)
    return UplinkBatch(gateway="gw", asset=asset, first_seq=first_seq,
                       timestamps=1_800_000_000.0 + np.arange(first_seq, first_seq + n),
                       features=tuple(FEATURES), values=rows.astype(np.float32),
                       probability=np.full(n, np.nan, np.float32),
                       rul=np.full(n, np.nan, np.float32), model_version="edge-1")


def drift_scorer(store, replica: str = "r1") -> Scorer:
    m = Manifest.model_validate({**MANIFEST, "training_stats": fd001_stats().model_dump()})
    return Scorer(store, FakeModel(m), m, Metrics(), lambda *_: None, max_delay=0,
                  replica=replica, drift=DriftOptions(interval=0.0))


def metric(scorer: Scorer, name: str, **labels: str) -> float | None:
    return scorer.metrics.registry.get_sample_value(name, labels)


# The fake model's sigmoid overflows on FD002 inputs normalised with FD001 statistics.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_the_scorer_checks_drift_stores_it_and_raises_and_clears_events_once(tmp_path):
    fd001 = model_inputs(FD001_TEST)
    fd002 = model_inputs(FD002_EXCERPT)
    store = SqliteStore(tmp_path / "cloud.db")
    scorer = drift_scorer(store)
    assert len(fd001["1"]) < SETTINGS.min_ticks  # 31 cycles: too few to judge
    long_lived = [u for u, rows in fd001.items() if len(rows) >= WINDOW][:2]
    batches = [cmapss_batch(f"fd001-{u}", fd001[u], 0) for u in ("1", *long_lived)]
    batches += [cmapss_batch(f"fd002-{u}", fd002[u], 0) for u in ("1", "3")]
    scorer.notify(store.write_ingest([Received(b, time.time()) for b in batches], [], []))
    scorer.drain()
    states = {d["asset"]: d["state"] for d in store.asset_drifts()}
    assert states == {"fd001-1": "unavailable", **{f"fd001-{u}": "ok" for u in long_lived},
                      "fd002-1": "drift", "fd002-3": "drift"}
    check = store.asset_drift("gw", "fd002-1")
    assert check is not None and check["ticks"] == WINDOW and check["last_seq"] == 257
    detail = json.loads(check["detail"])
    assert [f["feature"] for f in detail["features"]] == FEATURES
    assert [f["feature"] for f in detail["features"] if f["state"] == "drift"] == SENSORS_ONLY
    assert [(e["asset"], e["kind"]) for e in store.drift_events(None, None, None, 0, 50)] == [
        ("fd002-1", "raised"), ("fd002-3", "raised")]
    assert metric(scorer, "pdm_cloud_assets_drifting") == 2
    assert metric(scorer, "pdm_cloud_drift_events_total", kind="raised") == 2
    assert metric(scorer, "pdm_cloud_drift_psi", feature="sensor_4") > 1
    # More FD002 ticks: still drifting, no second event.
    more = fd002["1"][:60]
    scorer.notify(store.write_ingest([Received(cmapss_batch("fd002-1", more, 258),
                                               time.time())], [], []))
    scorer.drain()
    assert len(store.drift_events("gw", "fd002-1", None, 0, 50)) == 1
    # The engine's inputs come back to what the model knows: the event is cleared, once.
    healthy = fd001[long_lived[0]]
    scorer.notify(store.write_ingest([Received(cmapss_batch("fd002-1", healthy, 318),
                                               time.time())], [], []))
    scorer.drain()
    assert [e["kind"] for e in store.drift_events("gw", "fd002-1", None, 0, 50)] == [
        "raised", "cleared"]
    assert metric(scorer, "pdm_cloud_assets_drifting") == 1
    assert metric(scorer, "pdm_cloud_drift_events_total", kind="cleared") == 1
    # A replica that takes the fleet over starts from the stored states: no event repeated.
    scorer.stop()
    other = drift_scorer(store, replica="r2")
    other.notify(store.write_ingest([Received(cmapss_batch("fd002-3", fd002["3"][:20], 165),
                                              time.time())], [], []))
    other.drain()
    assert len(store.drift_events(None, None, None, 0, 50)) == 3
    assert metric(other, "pdm_cloud_assets_drifting") == 1


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_a_model_without_training_statistics_checks_nothing(tmp_path):
    store = SqliteStore(tmp_path / "cloud.db")
    m = Manifest.model_validate(MANIFEST)
    scorer = Scorer(store, FakeModel(m), m, Metrics(), lambda *_: None, max_delay=0,
                    drift=DriftOptions(interval=0.0))
    rows = model_inputs(FD002_EXCERPT)["1"]
    scorer.notify(store.write_ingest([Received(cmapss_batch("e1", rows, 0), time.time())],
                                     [], []))
    assert scorer.drain() > 0
    assert scorer.drift is not None and not scorer.drift.available
    assert store.asset_drifts() == [] and metric(scorer, "pdm_cloud_drift_checks_total") == 0


def test_a_regime_model_judges_each_regime_with_its_own_bins(train_data_dir):
    """An FD002 model (six regimes found by the converter) with per-regime statistics: FD002
    test engines switch regime every cycle, yet none drifts, because each tick is compared
    with its own regime's training distribution."""
    train = load_cmapss(train_data_dir / "train_FD002.txt", with_settings=True)
    kept, _ = split_assets(train.assets, 0.2, 0)
    fleet = train.subset(kept)
    features, norm, found = scaling_for(fleet, list(SENSORS), None, 0)
    assert found is not None and found.count == 6
    normaliser = Normaliser(features, norm, found)
    stats = training_stats(fleet.select(normaliser.columns), normaliser)
    assert len(stats.regimes) == 6 and sum(r.ticks for r in stats.regimes) == sum(
        len(rows) for rows in fleet.series.values())
    test = load_cmapss(train_data_dir / "test_FD002.txt", with_settings=True)
    states = []
    for rows in test.select(normaliser.columns).series.values():
        rows = rows[-WINDOW:]
        regime, _ = normaliser.regimes_of(rows)
        report = assess(rows[:, :len(features)], features, stats, SETTINGS, regime)
        assert sum(report.regime_ticks) == len(rows)
        states.append(report.state)
    judged = [s for s in states if s is not DriftState.UNAVAILABLE]
    assert len(judged) > 200 and DriftState.DRIFT not in judged


# -- over HTTP: the real FD001 model in the service, fed through a real broker -----------------

@pytest.fixture(scope="module")
def fd001_bundle_with_stats(tmp_path_factory):
    """The committed default bundle with the FD001 training statistics computed here, re-signed
    with a test key (so the figures below do not depend on the committed bundle's split)."""
    root = tmp_path_factory.mktemp("drift-bundle")
    private, public = root / "signing.key", root / "signing.pub"
    generate_keypair(private, public)
    folder = variant(DEFAULT_BUNDLE, root / "fd001-stats", "fd001-1.0-stats", private,
                     change=lambda _folder, doc: doc.update(
                         training_stats=fd001_stats().model_dump()))
    return folder, public


@pytest.fixture(scope="module")
def drifting_cloud(tmp_path_factory, fd001_bundle_with_stats):
    """The cloud service scoring with the FD001 model (and its training statistics), fed two
    FD001 and two FD002 test engines through a real broker; yields once every engine's last
    tick has been checked for drift."""
    folder, public = fd001_bundle_with_stats
    work = tmp_path_factory.mktemp("drifting")
    broker = Mosquitto(work / "broker").start()
    fd001 = model_inputs(FD001_TEST)
    fd002 = model_inputs(FD002_EXCERPT)
    engines = {f"fd001-{u}": fd001[u] for u in [u for u, r in fd001.items()
                                                 if len(r) >= WINDOW][:2]}
    engines |= {f"fd002-{u}": fd002[u] for u in ("1", "3")}
    c = Running(cloud_config(work, broker, folder, public, drift={"interval": 0.2}))
    publisher = Publisher(broker)
    try:
        for asset, rows in engines.items():
            for first in range(0, len(rows), 50):
                b = cmapss_batch(asset, rows[first:first + 50], first)
                publisher.send(topics.uplink("gw"), codec.encode_uplink(b))

        def checked_to_the_end() -> bool:
            drift = {a: c.http.get(f"/api/v1/assets/gw/{a}/drift").json() for a in engines}
            return all(d.get("last_seq") == len(engines[a]) - 1 for a, d in drift.items())

        wait_until(checked_to_the_end, 120, "drift checks of every engine's last tick")
        c.engines = engines  # type: ignore[attr-defined]
        yield c
    finally:
        publisher.close()
        c.close()
        broker.stop()


def test_the_api_and_metrics_show_fd002_engines_drifting_from_the_fd001_model(drifting_cloud):
    c = drifting_cloud
    engines = c.engines
    for asset in engines:
        drift = c.http.get(f"/api/v1/assets/gw/{asset}/drift").json()
        assert drift["ticks"] == min(WINDOW, len(engines[asset]))
        assert drift["model_version"] == "fd001-1.0-stats"
        assert [f["feature"] for f in drift["features"]] == FEATURES
        assert drift["thresholds"] == {"watch": 0.1, "drift": 0.25, "min_ticks": 50,
                                       "feature_share": 0.5}
        want = "drift" if asset.startswith("fd002") else "ok"
        assert drift["state"] == want, (asset, drift["score"])
        if want == "drift":
            assert [f["feature"] for f in drift["features"]
                    if f["state"] == "drift"] == SENSORS_ONLY
    listed = {a["asset"]: a["drift_state"] for a in c.http.get("/api/v1/assets").json()}
    assert listed == {a: ("drift" if a.startswith("fd002") else "ok") for a in engines}
    events = c.http.get("/api/v1/drift-events").json()["items"]
    assert sorted((e["asset"], e["kind"]) for e in events) == [
        ("fd002-1", "raised"), ("fd002-3", "raised")]
    assert events[0]["features"] == SENSORS_ONLY
    assert c.http.get("/api/v1/drift-events", params={"kind": "cleared"}).json() == {
        "items": [], "next_after_id": None}
    metrics = c.http.get("/metrics").text
    assert "pdm_cloud_assets_drifting 2.0" in metrics
    assert 'pdm_cloud_drift_events_total{kind="raised"} 2.0' in metrics
    psi_line = next(line for line in metrics.splitlines()
                    if line.startswith('pdm_cloud_drift_psi{feature="sensor_11"}'))
    assert float(psi_line.split()[-1]) > 1
    missing = c.http.get("/api/v1/assets/gw/nope/drift")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


@pytest.mark.browser
def test_the_asset_page_shows_a_drift_panel_and_the_fleet_a_drift_column(drifting_cloud,
                                                                          shared_browser):
    visit = Visit(shared_browser, drifting_cloud.server.url)
    try:
        page = visit.page
        page.goto("/")
        drift_of = page.eval_on_selector_all(
            "#fleet-table tbody tr[data-asset]",
            "rows => Object.fromEntries(rows.map(r => [r.dataset.asset, r.dataset.drift]))")
        assert drift_of == {a: ("drift" if a.startswith("fd002") else "ok")
                            for a in drifting_cloud.engines}
        page.goto("/assets/gw/fd002-1")
        assert page.get_attribute("#drift-state", "data-state") == "drift"
        states = page.eval_on_selector_all(
            "#drift-table tbody tr",
            "rows => Object.fromEntries(rows.map(r => [r.dataset.feature, r.dataset.state]))")
        assert states == {f: "ok" if f == AGE else "drift" for f in FEATURES}
        healthy = next(a for a in drifting_cloud.engines if a.startswith("fd001"))
        page.goto(f"/assets/gw/{healthy}")
        assert page.get_attribute("#drift-state", "data-state") == "ok"
        # the panel is a live region: its fragment answers on its own
        fragment = page.request.get("/ui/assets/gw/fd002-3/drift")
        assert fragment.status == 200 and 'data-state="drift"' in fragment.text()
    finally:
        visit.close()


def test_drift_of_a_model_without_statistics_says_why(tmp_path, broker):
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    generate_keypair(private, public)
    older = variant(DEFAULT_BUNDLE, tmp_path / "no-stats", "fd001-no-stats", private,
                    change=lambda _folder, doc: doc.pop("training_stats", None))
    c = Running(cloud_config(tmp_path, broker, older, public))
    publisher = Publisher(broker)
    try:
        rows = model_inputs(FD002_EXCERPT)["1"]
        publisher.send(topics.uplink("gw"), codec.encode_uplink(cmapss_batch("e1", rows, 0)))
        wait_until(lambda: c.http.get("/api/v1/assets/gw/e1").status_code == 200, 30,
                   "the asset stored")
        drift = c.http.get("/api/v1/assets/gw/e1/drift").json()
        assert drift["state"] == "unavailable" and drift["features"] == []
        assert "carries no training statistics" in drift["reason"]
    finally:
        publisher.close()
        c.close()
