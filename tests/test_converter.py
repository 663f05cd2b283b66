"""Converter: loaders and their refusals, split, windows, tiny train -> bundle -> verify."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from contract.bundle import generate_keypair, verify_bundle
from contract.errors import ContractError
from contract.manifest import Normalisation
from converter.data import (
    DataError,
    Fleet,
    all_windows,
    choose_features,
    last_windows,
    load_cmapss,
    load_csv,
    load_rul_truth,
    prepare_cmapss,
    split_assets,
)
from tests.conftest import DATA_DIR
from tests.support.bundles import flip_byte, variant

runner = CliRunner()


def cmapss_line(unit: int, cycle: int, value: float = 1.0) -> str:
    return " ".join([str(unit), str(cycle)] + [f"{value + i:.4f}" for i in range(24)]) + " \n"


# --------------------------------------------------------------------------- loaders

def test_cmapss_loader_reads_trailing_spaces_and_keeps_units_apart(tmp_path):
    f = tmp_path / "train_X.txt"
    f.write_text("".join(cmapss_line(u, c, u * 10 + c) for u in (1, 2) for c in (1, 2, 3)))
    fleet = load_cmapss(f)
    assert fleet.assets == ["1", "2"]
    assert fleet.columns[0] == "sensor_1" and len(fleet.columns) == 21
    assert fleet.series["2"].shape == (3, 21)
    assert fleet.series["2"][0, 0] == pytest.approx(21 + 3)  # first sensor is column 5
    assert list(fleet.rul("1")) == [2, 1, 0]


@pytest.mark.parametrize("text, reason", [
    (cmapss_line(1, 1) + "1 2 3\n", ":2: expected 26 columns, found 3"),
    (cmapss_line(1, 1) + cmapss_line(1, 2).replace("1.0000", "abc", 1), ":2: not a number"),
    (cmapss_line(1, 5) + cmapss_line(1, 4), ":2: unit 1 time goes backwards"),
    (cmapss_line(1, 1) + cmapss_line(1, 2).replace("1.0000", "nan", 1), ":2: NaN"),
    ("\n\n", "no data rows"),
])
def test_cmapss_loader_refuses_bad_files_with_line_and_reason(tmp_path, text, reason):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(DataError) as err:
        load_cmapss(f)
    assert str(f) in str(err.value) and reason in str(err.value)


def test_rul_truth_must_match_the_units(tmp_path):
    f = tmp_path / "test.txt"
    f.write_text("".join(cmapss_line(u, c) for u in (1, 2) for c in (1, 2)))
    truth = tmp_path / "RUL.txt"
    truth.write_text("10\n")
    with pytest.raises(DataError, match="1 remaining-life values for 2 units"):
        load_rul_truth(truth, load_cmapss(f))
    truth.write_text("10\n-3\n")
    with pytest.raises(DataError, match=r":2: remaining life must be a number >= 0"):
        load_rul_truth(truth, load_cmapss(f))
    truth.write_text("10\n20\n")
    assert list(load_rul_truth(truth, load_cmapss(f)).rul("2")) == [21, 20]


def test_csv_loader_reads_interleaved_assets(tmp_path):
    f = tmp_path / "fleet.csv"
    f.write_text("asset,time,temp,vib\npump-1,1,20.5,0.1\npump-2,1,19,0.2\npump-1,2,21,0.3\n")
    fleet = load_csv(f, "asset", "time")
    assert fleet.columns == ["temp", "vib"]
    assert fleet.series["pump-1"].tolist() == [[20.5, 0.1], [21.0, 0.3]]
    assert list(fleet.times["pump-2"]) == [1.0]


@pytest.mark.parametrize("text, reason", [
    ("", "empty file"),
    ("machine,time,x\n", "no column 'asset'"),
    ("asset,time,x\na,1,2,3\n", ":2: expected 3 columns, found 4"),
    ("asset,time,x\na,1,oops\n", ":2: column 'x' is not a number: 'oops'"),
    ("asset,time,x\na,1,inf\n", ":2: column 'x' is NaN or infinite"),
    ("asset,time,x\na,2,1\nb,1,1\na,2,1\n", ":4: asset a time goes backwards"),
    ("asset,time,x\n,1,1\n", ":2: empty asset id"),
    ("asset,time,x\n", "no data rows"),
])
def test_csv_loader_refuses_bad_files_with_line_and_reason(tmp_path, text, reason):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(DataError) as err:
        load_csv(f, "asset", "time")
    assert reason in str(err.value)


# --------------------------------------------------------------------------- split, windows

def test_split_is_by_asset_seeded_and_leaves_no_asset_on_both_sides():
    assets = [str(i) for i in range(1, 101)]
    kept, held = split_assets(assets, 0.2, seed=3)
    assert len(held) == 20 and not set(kept) & set(held) and set(kept) | set(held) == set(assets)
    assert split_assets(assets, 0.2, seed=3) == (kept, held)
    assert split_assets(assets, 0.2, seed=4) != (kept, held)


def test_prepared_cmapss_has_no_unit_in_two_splits_and_statistics_from_train_only(
        train_data_dir):
    p = prepare_cmapss(train_data_dir, "FD001", window=30, max_units=20)
    assert not set(p.train_assets) & set(p.val_assets)
    assert set(np.unique(p.train.asset)) == set(p.train_assets)
    assert set(np.unique(p.val.asset)) == set(p.val_assets)
    # min-max from the training units: their normalised values span exactly [0, 1]
    flat = p.train.x.reshape(-1, p.train.x.shape[-1])
    assert np.allclose(flat.min(axis=0), 0, atol=1e-3) and np.allclose(flat.max(axis=0), 1,
                                                                        atol=1e-3)
    # the engine's age first, then the 14 sensors that vary
    assert p.features == ["cycle", "sensor_2", "sensor_3", "sensor_4", "sensor_7", "sensor_8",
                          "sensor_9", "sensor_11", "sensor_12", "sensor_13", "sensor_14",
                          "sensor_15", "sensor_17", "sensor_20", "sensor_21"]
    assert prepare_cmapss(train_data_dir, "FD001", window=30, max_units=20,
                          with_age=False).features == p.features[1:]
    # the drift statistics describe the same training units (one regime: FD001)
    stats = p.training_stats
    assert stats is not None and len(stats.regimes) == 1
    train = load_cmapss(train_data_dir / "train_FD001.txt")
    assert stats.regimes[0].ticks == sum(len(train.series[a]) for a in p.train_assets)
    assert len(stats.regimes[0].features) == len(p.features)


def test_constant_and_two_level_features_are_dropped():
    rng = np.random.default_rng(0)
    rows = np.column_stack([np.full(50, 3.0), rng.integers(0, 2, 50), rng.normal(size=50)])
    fleet = Fleet(["const", "toggle", "signal"], {"a": rows}, {"a": np.arange(50.0)})
    assert choose_features(fleet) == ["signal"]


def test_windows_and_labels_have_the_expected_shapes_and_padding():
    norm = Normalisation(method="minmax", offset=[0.0, 0.0], scale=[1.0, 1.0])
    long = np.arange(20, dtype=float).reshape(10, 2)
    short = np.arange(6, dtype=float).reshape(3, 2)
    fleet = Fleet(["a", "b"], {"u1": long, "u2": short},
                  {"u1": np.arange(1.0, 11), "u2": np.arange(1.0, 4)}, {"u2": 40.0})
    w = all_windows(fleet, norm, window=4)
    assert w.x.shape == (7 + 1, 4, 2)
    assert list(w.rul[:7]) == [6, 5, 4, 3, 2, 1, 0]
    assert w.rul[7] == 40 and w.x[7, 0].tolist() == w.x[7, 1].tolist() == [0.0, 1.0]
    assert list(w.labels(3)) == [0, 0, 0, 1, 1, 1, 1, 0]
    assert w.rul_fraction(5).max() == 1.0
    last = last_windows(fleet, norm, window=4)
    assert last.x.shape == (2, 4, 2) and list(last.rul) == [0.0, 40.0]


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "signing.pem", d / "signing.pub")
    return d / "signing.pem", d / "signing.pub"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, keys):
    """A bundle from 8 units, three epochs, the default network, int8 edge model: built through
    the CLI (--allow-weak: so small a run cannot reach the quality floor)."""
    if not (DATA_DIR / "train_FD001.txt").exists():
        pytest.skip(f"C-MAPSS data not found in {DATA_DIR}")
    from converter.cli import app

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = runner.invoke(app, ["train", "--data", str(DATA_DIR), "--out", str(out),
                                 "--max-units", "8", "--epochs", "3", "--window", "20",
                                 "--quantize", "int8",
                                 "--calibration-windows", "100", "--version", "tiny-1",
                                 "--sign-key", str(keys[0]), "--allow-weak"])
    assert result.exit_code == 0, result.output
    assert "Saved artifact" not in result.output and "structure" not in result.output
    return out


@pytest.mark.slow
def test_tiny_train_writes_a_signed_int8_bundle_that_litert_runs(tiny_bundle, keys):
    manifest = verify_bundle(tiny_bundle, [keys[1]])
    assert manifest.edge.quantization == "int8" and manifest.edge.file == "model_int8.tflite"
    assert manifest.window == 20 and len(manifest.features) == 15
    assert set(manifest.metrics) >= {"keras", "float32", "int8", "training"}
    assert manifest.metrics["training"]["members"] == 3  # the recipe's average of three
    assert manifest.training_stats is not None  # for the cloud's drift checks
    assert [len(r.features) for r in manifest.training_stats.regimes] == [15]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tiny_bundle / "model_int8.tflite"))
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    assert detail["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    interp.set_tensor(detail["index"], np.zeros(detail["shape"], np.int8))
    interp.invoke()
    assert interp.get_tensor(interp.get_output_details()[0]["index"]).shape == (1, 2)


@pytest.mark.slow
def test_verify_passes_on_the_bundle_and_report_writes_plots(tiny_bundle, keys, tmp_path):
    from converter.cli import app

    result = runner.invoke(app, ["verify", str(tiny_bundle), "--trusted-key", str(keys[1]),
                                 "--data", str(DATA_DIR)])
    assert result.exit_code == 0, result.output
    assert "parity gate: passed" in result.output and "signature verified" in result.output
    result = runner.invoke(app, ["report", str(tiny_bundle), "--out", str(tmp_path / "r"),
                                 "--data", str(DATA_DIR)])
    assert result.exit_code == 0, result.output
    for name in ("training_curves.png", "confusion.png", "rul_per_unit.png",
                 "probability_over_life.png"):
        assert (tmp_path / "r" / name).read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "| float Keras |" in summary and "the mean of 3 networks trained on all" in summary


@pytest.mark.slow
def test_a_corrupted_edge_model_is_refused(tiny_bundle, keys, tmp_path):
    from converter.cli import app

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    flip_byte(broken / "model_int8.tflite", 500)
    with pytest.raises(ContractError, match="model_int8.tflite has SHA-256"):
        verify_bundle(broken, [keys[1]])
    result = runner.invoke(app, ["verify", str(broken), "--trusted-key", str(keys[1]),
                                 "--data", str(DATA_DIR)])
    assert result.exit_code == 2 and "changed after signing" in result.output


@pytest.mark.slow
def test_an_edge_model_that_disagrees_fails_the_gate(tiny_bundle, keys, tmp_path):
    """A signed, well-formed bundle whose edge model says "fails now" for every window."""
    import keras

    from converter.cli import app
    from converter.quantize import convert_float

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    inp = keras.Input((manifest["window"], len(manifest["features"])))
    out = keras.layers.Dense(2, activation="sigmoid", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant([6.0, -6.0]))(
        keras.layers.Flatten()(inp))
    always_failing = convert_float(keras.Model(inp, out))

    def swap(folder, doc):
        (folder / "model_int8.tflite").write_bytes(always_failing)

    bad = variant(tiny_bundle, tmp_path / "bad", "tiny-bad", keys[0], swap)
    verify_bundle(bad, [keys[1]])  # signature and hashes are fine
    result = runner.invoke(app, ["verify", str(bad), "--trusted-key", str(keys[1]),
                                 "--data", str(DATA_DIR)])
    assert result.exit_code == 1, result.output
    assert "parity gate:" in result.output and "RUL RMSE rises" in result.output


def test_the_gate_refuses_each_tolerance_it_misses_and_names_the_figure():
    from contract.manifest import Tolerances
    from converter.evaluate import parity_gate

    tol = Tolerances()
    assert (tol.decision_agreement, tol.max_prob_diff) == (0.999, 0.05)
    ref = {"f1": 0.95, "rmse": 12.0}
    close = {"windows": 10000, "decision_agreement": 0.9995, "max_prob_diff": 0.04}
    assert parity_gate(ref, {"f1": 0.945, "rmse": 12.3}, close, tol).passed
    jumpy = dict(close, max_prob_diff=0.0622)
    gate = parity_gate(ref, ref, jumpy, tol)
    assert not gate.passed and str(gate) == "probability differs by up to 0.0622, tolerance 0.05"
    split = dict(close, decision_agreement=0.9985)
    assert "decisions agree on 99.8500% of 10000 windows, tolerance 99.90%" in str(
        parity_gate(ref, ref, split, tol))
    worse = parity_gate(ref, {"f1": 0.93, "rmse": 12.6}, close, tol)
    assert "F1 drops by 0.0200" in str(worse) and "RUL RMSE rises by 0.600" in str(worse)


def test_the_recipe_builds_both_bodies_with_the_two_named_heads():
    from converter.model import CELL_STATE, PROBABILITY, RUL_FRACTION, build_training_model
    from converter.recipe import DEFAULT_WINDOW, ModelConfig

    cnn = build_training_model(DEFAULT_WINDOW, 14, ModelConfig())
    assert set(cnn.output_names) == {PROBABILITY, RUL_FRACTION}
    assert any(layer.name == "conv_1" for layer in cnn.layers)
    lstm = build_training_model(30, 14, ModelConfig(arch="lstm", lstm1=8, lstm2=4))
    assert set(lstm.output_names) == {PROBABILITY, RUL_FRACTION, CELL_STATE}
    with pytest.raises(ValueError, match="unknown architecture 'gru'; choose one of cnn, lstm"):
        ModelConfig(arch="gru")


def test_input_noise_acts_in_training_only():
    from converter.model import build_training_model, inference_model
    from converter.recipe import ModelConfig

    trained = build_training_model(20, 3, ModelConfig(input_noise=0.5, dropout=0.0))
    shipped = inference_model(trained)
    x = np.random.default_rng(0).uniform(0, 1, (4, 20, 3)).astype(np.float32)
    noisy = [np.asarray(trained(x, training=True)["rul_fraction"]) for _ in range(2)]
    assert not np.allclose(noisy[0], noisy[1])
    # the shipped model (and so every TFLite conversion of it) sees the window as it is
    clean = np.asarray(shipped(x, training=False))
    assert np.array_equal(clean, np.asarray(shipped(x, training=False)))
    assert np.allclose(clean[:, 1:], np.asarray(trained(x, training=False)["rul_fraction"]))


def test_members_are_refit_on_every_asset_and_averaged_into_one_model():
    """Early stopping on the held-out windows picks the epochs; each member then trains on
    train + validation for exactly that many epochs, and the shipped model is their mean."""
    from converter.data import Windows
    from converter.model import predict, train
    from converter.recipe import ModelConfig

    rng = np.random.default_rng(0)

    def windows(n: int) -> Windows:
        rul = rng.uniform(0, 200, n)
        x = np.repeat((rul / 200)[:, None, None], 10, axis=1) + rng.normal(0, 0.05, (n, 10, 2))
        return Windows(x.astype(np.float32), rul, np.zeros(n, dtype=object), rul)

    train_w, val_w = windows(256), windows(64)
    seen: list[tuple[str, int]] = []
    cfg = ModelConfig(filters=4, dense=4, epochs=4, patience=1, members=2, batch_size=64)
    result = train(train_w, val_w, 30, 125, cfg, verbose=0,
                   fit_callbacks=lambda label, epochs: seen.append((label, epochs)) or [])
    assert result.members == 2 and 1 <= result.best_epoch <= 4
    assert seen == [("training", 4), ("member 1/2, all assets", result.best_epoch),
                    ("member 2/2, all assets", result.best_epoch)]
    members = [result.model.get_layer(f"member_{k}") for k in (1, 2)]
    x = val_w.x[:16]
    outputs = [predict(m, x) for m in members]
    assert not np.allclose(outputs[0], outputs[1])  # two initialisations
    assert np.allclose(predict(result.model, x), (outputs[0] + outputs[1]) / 2, atol=1e-6)
    assert predict(result.model, x).shape == (16, 2)
    single = train(train_w, val_w, 30, 125, ModelConfig(filters=4, dense=4, epochs=2,
                                                        members=0), verbose=0)
    assert single.members == 0 and single.model.output.shape[-1] == 2
    with pytest.raises(ValueError, match="members must be 0 or more"):
        ModelConfig(members=-1)


def test_train_refuses_an_unknown_architecture(tmp_path):
    from converter.cli import app

    result = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--arch", "gru"])
    assert result.exit_code == 2 and "--arch 'gru': choose cnn, lstm" in result.output


def test_train_refuses_missing_data_and_unknown_mode(tmp_path):
    from converter.cli import app

    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "train_FD001.txt" in result.output
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--quantize", "int4"])
    assert result.exit_code == 2 and "--quantize 'int4'" in result.output
    assert not (tmp_path / "b").exists()


def test_keygen_refuses_to_overwrite_and_sign_refuses_a_changed_file(tmp_path, keys):
    from converter.cli import app

    result = runner.invoke(app, ["keygen", str(keys[0]), str(tmp_path / "x.pub")])
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    result = runner.invoke(app, ["sign", str(folder), "--key", str(keys[0])])
    assert result.exit_code == 2 and "manifest" in result.output

