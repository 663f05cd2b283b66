"""Operating regimes: found from the settings, recorded in the manifest, applied by
contract.preprocess exactly as the converter applied them (real C-MAPSS FD001 and FD002 rows)."""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from contract import codec, topics
from contract.cmapss import COLUMNS, read_cmapss
from contract.manifest import EdgeModel, Manifest, Normalisation, Regimes, Source
from contract.preprocess import Normaliser, normalise, normalised_window, sliding_windows
from converter.data import DataError, fit_regimes, load_cmapss, prepare_cmapss, prepare_csv
from tests.conftest import DATA_DIR, DEFAULT_BUNDLE, REPO
from tests.support.broker import free_port
from tests.support.mqtt import Recorder
from tests.support.procs import track

FILES = {"model.keras": "0" * 64, "model_float.tflite": "0" * 64, "model_int8.tflite": "0" * 64}


def needs(subset: str) -> None:
    if not (DATA_DIR / f"train_{subset}.txt").is_file():
        pytest.skip(f"C-MAPSS {subset} is not in {DATA_DIR}")


def manifest_of(features, normalisation=None, regimes=None, window=30) -> Manifest:
    return Manifest(version="t1", created="2026-01-01T00:00:00Z",
                    source=Source(dataset="C-MAPSS FD002", files={}), features=list(features),
                    window=window, normalisation=normalisation, regimes=regimes, horizon=30,
                    rul_cap=125, edge=EdgeModel(file="model_int8.tflite", quantization="int8"),
                    files=FILES)


@pytest.fixture(scope="module")
def fd002():
    needs("FD002")
    return prepare_cmapss(DATA_DIR, "FD002", window=30, max_units=40)


def test_the_regime_count_comes_from_the_data_one_for_fd001_six_for_fd002():
    needs("FD001")
    needs("FD002")
    one = fit_regimes(load_cmapss(DATA_DIR / "train_FD001.txt", with_settings=True))
    six = fit_regimes(load_cmapss(DATA_DIR / "train_FD002.txt", with_settings=True))
    assert (one.count, six.count) == (1, 6)
    # the six FD002 operating conditions, as published: altitude (kft), Mach, throttle angle
    centres = (np.asarray(six.centres) * six.setting_scale + six.setting_offset).round(1)
    assert sorted(map(tuple, centres[:, [0, 2]])) == [
        (0.0, 100.0), (10.0, 100.0), (20.0, 100.0), (25.0, 60.0), (35.0, 100.0), (42.0, 100.0)]


def test_fd001_keeps_one_global_normalisation_and_features_only():
    needs("FD001")
    p = prepare_cmapss(DATA_DIR, "FD001", window=30, max_units=20)
    assert p.regimes is None and p.normalisation is not None
    assert p.columns == p.features and len(p.features) == 15


def test_fd002_regimes_are_recorded_and_ticks_carry_the_settings(fd002):
    assert fd002.regimes is not None and fd002.normalisation is None
    assert fd002.regimes.count == 6
    assert fd002.features == ["cycle", "sensor_2", "sensor_3", "sensor_4", "sensor_7", "sensor_8",
                              "sensor_9", "sensor_11", "sensor_12", "sensor_13", "sensor_14",
                              "sensor_15", "sensor_17", "sensor_20", "sensor_21"]
    assert fd002.columns == [*fd002.features, "setting_1", "setting_2", "setting_3"]
    assert fd002.out_of_regime == {"train": 0, "val": 0, "test": 0}
    # per-regime z-scores: the regime no longer shifts a sensor's level
    flat = fd002.train.x.reshape(-1, len(fd002.features))
    assert np.abs(flat.mean(axis=0)).max() < 0.5


def test_the_contract_gives_the_converters_arrays_exactly(fd002):
    m = manifest_of(fd002.features, regimes=fd002.regimes)
    m = Manifest.model_validate_json(m.model_dump_json())  # through JSON, as a gateway reads it
    raw = read_cmapss(DATA_DIR / "test_FD002.txt")
    cols = [COLUMNS.index(c) for c in m.columns]
    for i, unit in enumerate(fd002.test_assets):
        rows = raw[raw[:, 0] == int(unit)][:, cols].astype(np.float32)
        assert np.array_equal(normalised_window(rows, m), fd002.test.scored.x[i])
    # every window of the first test unit, normalised as a batch (the cloud's way)
    first = raw[raw[:, 0] == int(fd002.test_assets[0])][:, cols]
    x, far = normalise(sliding_windows(first, m.window), m)
    assert np.array_equal(x, fd002.test.every.x[: len(x)]) and not far.any()


def test_a_tick_far_from_every_regime_is_flagged_and_scaled_by_the_nearest(fd002):
    n = Normaliser(fd002.features, regimes=fd002.regimes)
    raw = read_cmapss(DATA_DIR / "test_FD002.txt")[:5][:, [COLUMNS.index(c) for c in n.columns]]
    far = raw.copy()
    far[2, -3] += 3.0  # altitude 3 kft off its operating point
    x, flagged = n.apply(far)
    assert flagged.tolist() == [False, False, True, False, False]
    assert n.out_of_regime(far[2]) and not n.out_of_regime(raw[2])
    assert np.array_equal(x[2], n.apply(raw)[0][2])  # nearest regime's statistics, not dropped


def test_wrong_columns_are_refused_with_the_names():
    n = Normaliser(["a", "b"], Normalisation(method="minmax", offset=[0, 0], scale=[1, 1]))
    with pytest.raises(ValueError, match=r"rows have 3 columns, the model needs 2 \(a, b\)"):
        n.apply(np.zeros((4, 3)))


def test_a_single_regime_manifest_normalises_as_schema_1_did():
    norm = Normalisation(method="minmax", offset=[1.5, -2.0], scale=[3.0, 0.25])
    rows = np.random.default_rng(0).normal(size=(7, 30, 2)).astype(np.float32)
    x, far = normalise(rows, manifest_of(["a", "b"], normalisation=norm))
    assert np.array_equal(x, norm.apply(rows)) and x.shape == (7, 30, 2) and not far.any()


def test_a_schema_1_manifest_still_loads():
    doc = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    doc["schema_version"] = 1
    m = Manifest.model_validate(doc)
    assert m.regimes is None and m.columns == m.features
    doc["regimes"] = {"settings": ["s"], "setting_offset": [0], "setting_scale": [1],
                      "centres": [[0]], "max_distance": 1, "method": "zscore",
                      "offset": [[0] * len(m.features)], "scale": [[1] * len(m.features)]}
    with pytest.raises(ValidationError, match="regimes need schema_version 2"):
        Manifest.model_validate(doc)
    doc["schema_version"] = 2
    with pytest.raises(ValidationError, match="exactly one of normalisation"):
        Manifest.model_validate(doc)


@pytest.mark.parametrize("change, words", [
    ({"centres": [[0.0, 1.0]]}, "every centre needs 1 coordinates"),
    ({"scale": [[1.0, 0.0]]}, "every scale must be > 0"),
    ({"offset": [[0.0]]}, "one entry per feature"),
    ({"setting_scale": [0.0]}, "every setting_scale must be > 0"),
])
def test_inconsistent_regimes_are_refused(change, words):
    good = {"settings": ["s"], "setting_offset": [0.0], "setting_scale": [1.0],
            "centres": [[0.0]], "max_distance": 1.0, "method": "zscore",
            "offset": [[0.0, 0.0]], "scale": [[1.0, 1.0]]}
    Regimes.model_validate(good)
    with pytest.raises(ValidationError, match=words):
        Regimes.model_validate({**good, **change})


def test_forcing_regimes_on_data_without_settings_is_refused(tmp_path):
    f = tmp_path / "run.csv"
    f.write_text("asset,time,a\n" + "".join(f"u{u},{t},{t * u}\n" for u in range(3)
                                             for t in range(1, 6)))
    with pytest.raises(DataError, match="needs operational-setting columns"):
        prepare_csv(f, "asset", "time", None, window=2, regimes=3)


# --------------------------------------------------------------------------- edge and cloud

T0 = 1_800_000_000.0
RW = 10  # window of the regime bundle


@pytest.fixture(scope="module")
def regime_bundle(tmp_path_factory):
    """A signed FD002 bundle with six regimes (found from 12 training units) and a real float
    TFLite edge model. The network is the small readable one of tests/support/cloud.py
    (probability follows the first normalised feature), not trained: these tests are about
    the data path, and a bundle built this way takes seconds."""
    needs("FD002")
    from contract.bundle import generate_keypair, sha256_file, sign_bundle
    from converter.quantize import convert_float
    from tests.support.cloud import build_keras_model

    p = prepare_cmapss(DATA_DIR, "FD002", window=RW, max_units=12)
    root = tmp_path_factory.mktemp("regime-bundle")
    folder = root / "fd002-regimes-1"
    folder.mkdir()
    generate_keypair(root / "k.pem", root / "k.pub")
    model = build_keras_model(RW, len(p.features), (8,), gain=1.0)
    model.save(folder / "model.keras")
    flat = convert_float(model)
    (folder / "model_float.tflite").write_bytes(flat)
    (folder / "model_edge.tflite").write_bytes(flat)
    m = Manifest(version="fd002-regimes-1", created="2026-11-25T00:00:00Z",
                 source=Source(dataset="C-MAPSS FD002", files={}), features=p.features,
                 window=RW, regimes=p.regimes, horizon=30, rul_cap=125,
                 edge=EdgeModel(file="model_edge.tflite", quantization="float32"),
                 files={n: sha256_file(folder / n) for n in
                        ("model.keras", "model_float.tflite", "model_edge.tflite")})
    (folder / "manifest.json").write_text(m.model_dump_json(indent=2))
    sign_bundle(folder, root / "k.pem")
    return folder, root / "k.pub"


def fd002_test_rows(unit: int, columns: list[str]) -> np.ndarray:
    raw = read_cmapss(DATA_DIR / "test_FD002.txt")
    return raw[raw[:, 0] == unit][:, [COLUMNS.index(c) for c in columns]].astype(np.float32)


@pytest.mark.slow
def test_the_edge_scores_a_regime_bundle_and_flags_a_tick_out_of_regime(regime_bundle):
    from contract.bundle import verify_bundle
    from edge_agent.pipeline import Pipeline
    from edge_agent.readings import Reading
    from edge_agent.scorer import Scorer

    folder, pub = regime_bundle
    m = verify_bundle(folder, [pub])
    assert m.schema_version == 2 and m.regimes is not None and m.regimes.count == 6
    pipeline = Pipeline("gw1", m, Scorer(folder / m.edge.file, m))
    rows = fd002_test_rows(1, m.columns)[:RW + 5]
    far_at = RW + 2
    rows[far_at, m.columns.index("setting_1")] += 5.0  # 5 kft away from any flight condition
    done = [pipeline.process(Reading("engine-1", T0 + i, dict(zip(m.columns, map(float, r),
                                                                  strict=True))))
            for i, r in enumerate(rows)]
    assert [p.score is not None for p in done] == [i >= RW - 1 for i in range(len(rows))]
    assert [p.out_of_regime for p in done] == [i == far_at for i in range(len(rows))]
    assert done[-1].tick.values.shape == (len(m.columns),)  # the outbox row holds the settings
    # the edge's scores are those of the float model on the contract's normalised windows
    import keras

    keras_model = keras.saving.load_model(folder / "model.keras", compile=False)
    x, _ = normalise(sliding_windows(rows, RW), m)
    want = keras.ops.convert_to_numpy(keras_model(x))[:, 0]
    got = [p.score.probability for p in done[RW - 1:]]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_the_cloud_scores_settings_carrying_batches_counts_far_ticks_and_explains_old_ones(
        regime_bundle, tmp_path):
    from cloud_service.metrics import Metrics
    from cloud_service.model import load_verified
    from cloud_service.scoring import Scorer
    from cloud_service.store import Received, SqliteStore
    from contract.payloads import UplinkBatch

    folder, pub = regime_bundle
    m, model = load_verified(folder, [pub])
    store = SqliteStore(tmp_path / "cloud.db")
    metrics = Metrics()
    scorer = Scorer(store, model, m, metrics, lambda topic, payload: None, max_delay=0)
    scorer.recover()
    rows = fd002_test_rows(2, m.columns)[:RW + 10]
    rows[RW + 3, m.columns.index("setting_3")] = 80.0  # a throttle angle no regime has
    n = len(rows)

    def batch(asset: str, columns: list[str], values: np.ndarray) -> Received:
        return Received(UplinkBatch(
            gateway="gw1", asset=asset, first_seq=0, timestamps=T0 + np.arange(n),
            features=tuple(columns), values=values, probability=np.full(n, np.nan, np.float32),
            rul=np.full(n, np.nan, np.float32), model_version="edge-1"), 1.0)

    old = batch("old-agent", m.features, rows[:, : len(m.features)])  # no settings columns
    scorer.notify(store.write_ingest([batch("engine-2", m.columns, rows), old], [], []))
    scorer.drain()
    preds = store.predictions("gw1", "engine-2", -1, None, 100)
    assert [p["seq"] for p in preds] == list(range(RW - 1, n))
    x, far = normalise(sliding_windows(rows, RW), m)
    prob, _ = model(x)
    np.testing.assert_allclose([p["probability"] for p in preds], prob, atol=1e-5)
    assert far[:, -1].sum() == 1 and metrics.out_of_regime._value.get() == 1
    assert b"pdm_cloud_out_of_regime_total 1.0" in metrics.render()
    unscored = store.predictions("gw1", "old-agent", -1, None, 100)
    assert unscored and all(p["probability"] is None and "setting_1" in p["error"]
                            for p in unscored)
    store.close()


@pytest.mark.slow
def test_the_agent_uplinks_the_settings_and_counts_a_far_tick(regime_bundle, tmp_path, broker):
    folder, pub = regime_bundle
    m = Manifest.model_validate_json((folder / "manifest.json").read_text())
    rows = fd002_test_rows(3, m.columns)[:RW + 6]
    rows[RW + 1, m.columns.index("setting_2")] = 0.5  # a Mach number between the regimes
    source = tmp_path / "engine.csv"
    with source.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["asset", "time", *reversed(m.columns)])  # any column order will do
        out.writerows(["engine-3", T0 + i, *reversed(r.tolist())] for i, r in enumerate(rows))
    metrics_port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "gateway_id": "gw-r", "broker": {"host": broker.host, "port": broker.port},
        "sources": [{"type": "csv", "file": str(source), "rate": 4}],
        "bundle": {"path": str(folder), "trusted_keys": [str(pub)]},
        "outbox": {"path": str(tmp_path / "outbox.db"), "batch_max_age": 0.2},
        "metrics_port": metrics_port}))
    rec = Recorder(broker.host, broker.port, [topics.uplink("gw-r")])
    log_path = tmp_path / "agent.log"
    agent = track(subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config),
         "--exit-when-drained"], cwd=REPO, stdout=log_path.open("w"), stderr=subprocess.STDOUT))
    text = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and agent.poll() is None:
        with contextlib.suppress(OSError):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read(
            ).decode()
        if f"pdm_edge_ticks_total {len(rows)}.0" in text:
            break
        time.sleep(0.2)
    assert agent.wait(timeout=60) == 0, log_path.read_text()[-4000:]
    assert "pdm_edge_out_of_regime_total 1.0" in text, text
    assert "1 tick(s) out of every operating regime (e.g. asset engine-3" in log_path.read_text()
    assert rec.wait_for(lambda ms: sum(len(codec.decode_uplink(x.payload).seqs) for x in ms)
                        >= len(rows), timeout=30)
    batches = [codec.decode_uplink(x.payload) for x in rec.messages]
    assert {b.features for b in batches} == {tuple(m.columns)}
    sent = np.concatenate([b.values for b in batches])
    assert np.array_equal(sent, rows)  # settings included, as read
    rec.close()
