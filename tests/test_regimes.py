"""Operating regimes: found from the settings, recorded in the manifest, applied by
contract.preprocess exactly as the converter applied them (real C-MAPSS FD001 and FD002 rows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from contract.cmapss import COLUMNS, read_cmapss
from contract.manifest import EdgeModel, Manifest, Normalisation, Regimes, Source
from contract.preprocess import Normaliser, normalise, normalised_window, sliding_windows
from converter.data import DataError, fit_regimes, load_cmapss, prepare_cmapss
from tests.conftest import DATA_DIR, DEFAULT_BUNDLE

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
    assert p.columns == p.features and len(p.features) == 14


def test_fd002_regimes_are_recorded_and_ticks_carry_the_settings(fd002):
    assert fd002.regimes is not None and fd002.normalisation is None
    assert fd002.regimes.count == 6
    assert fd002.features == ["sensor_2", "sensor_3", "sensor_4", "sensor_7", "sensor_8",
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
    from converter.data import prepare_csv
    with pytest.raises(DataError, match="needs operational-setting columns"):
        prepare_csv(f, "asset", "time", None, window=2, regimes=3)
