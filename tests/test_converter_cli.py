"""Converter command line: quality floor, log capture, signature refusal, keygen, help text."""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from contract.bundle import read_manifest
from converter.cli import DATA_ENV, app, default_log
from converter.quality import QualityFloor, below_floor, describe_misses
from converter.quiet import captured_output
from tests.conftest import DATA_DIR, DEFAULT_BUNDLE, REPO

runner = CliRunner()
CHATTER = ("Saved artifact", "TensorSpec", "oneDNN", "absl::InitializeLog",
           "structure of `inputs`")


# --------------------------------------------------------------------------- quality floor

def test_the_floor_passes_good_figures_and_names_every_missed_one():
    floor = QualityFloor()  # F1 >= 0.8, RMSE <= 25
    assert below_floor(floor, {"keras": {"f1": 0.917, "rmse": 13.3},
                               "int8": {"f1": 0.8, "rmse": 25.0}}) == []
    misses = below_floor(floor, {"keras": {"f1": 0.773, "rmse": 13.3},
                                 "dynamic": {"f1": 0.9, "rmse": 25.01}})
    assert [(m.model, m.figure) for m in misses] == [("keras", "F1"), ("dynamic", "RUL RMSE")]
    assert describe_misses(misses) == "keras F1 0.773 < 0.800; dynamic RUL RMSE 25.01 > 25.00"


def test_an_unmeasured_figure_misses_the_floor():
    misses = below_floor(QualityFloor(min_f1=0.5, max_rmse=30),
                         {"keras": {"f1": math.nan}, "int8": {"f1": 0.9, "rmse": math.inf}})
    assert [(m.model, m.figure) for m in misses] == [
        ("keras", "F1"), ("keras", "RUL RMSE"), ("int8", "RUL RMSE")]


# --------------------------------------------------------------------------- captured output

def test_captured_output_takes_python_and_descriptor_writes_but_not_the_terminal(
        tmp_path, capfd):
    log = tmp_path / "logs" / "run.train.log"
    with captured_output(log) as terminal:
        os.write(1, b"c-level stdout\n")
        os.write(2, b"c-level stderr\n")
        print("python stdout")
        print("python stderr", file=sys.stderr)
        terminal.write("for people\n")
    print("after the capture")
    out, err = capfd.readouterr()
    text = log.read_text()
    for line in ("c-level stdout", "c-level stderr", "python stdout", "python stderr"):
        assert line in text and line not in out + err
    assert "for people" in err and "for people" not in text
    assert "after the capture" in out and "after the capture" not in text


def test_the_tflite_converters_dump_goes_to_the_log(tmp_path, capfd):
    import keras

    from converter.quantize import convert_float

    inp = keras.Input((4, 2), name="window")
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    with captured_output(tmp_path / "x.log"):
        flat = convert_float(model)
    out, err = capfd.readouterr()
    assert flat[4:8] == b"TFL3"
    text = (tmp_path / "x.log").read_text()
    assert "Saved artifact" in text and "TensorSpec" in text
    assert "Saved artifact" not in out + err and "TensorSpec" not in out + err


def test_models_take_a_window_batch_without_a_structure_warning():
    """The shipped model's input is one tensor, not a list of one; the committed bundle (saved
    before) is fed a tensor by predict."""
    import keras

    from converter.model import ModelConfig, build_training_model, inference_model, predict

    model = inference_model(build_training_model(5, 3, ModelConfig(lstm1=4, lstm2=2)))
    x = np.zeros((2, 5, 3), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.asarray(model(x)).shape == (2, 2)
        assert predict(model, x).shape == (2, 2)
        shipped = keras.saving.load_model(DEFAULT_BUNDLE / "model.keras", compile=False)
        m = read_manifest(DEFAULT_BUNDLE)
        x = np.zeros((3, m.window, len(m.features)), np.float32)
        assert predict(shipped, x).shape == (3, 2)
    assert [str(w.message) for w in caught if "structure" in str(w.message)] == []


# --------------------------------------------------------------------------- verify

@pytest.fixture
def bundle_without_keys(tmp_path):
    """The committed bundle in a folder with no *.pub beside it."""
    dest = tmp_path / "bundles" / "default"
    shutil.copytree(DEFAULT_BUNDLE, dest)
    return dest


def test_verify_refuses_when_it_cannot_check_the_signature(bundle_without_keys):
    result = runner.invoke(app, ["verify", str(bundle_without_keys)])
    assert result.exit_code == 2, result.output
    assert "no trusted key" in result.output and "--no-signature" in result.output
    result = runner.invoke(app, ["verify", str(bundle_without_keys), "--no-signature",
                                 "--trusted-key", str(REPO / "models" /
                                                      "default_signing_key.pub")])
    assert result.exit_code == 2 and "contradict" in result.output


def test_verify_with_no_signature_checks_hashes_and_parity(bundle_without_keys, data_dir):
    result = runner.invoke(app, ["verify", str(bundle_without_keys), "--no-signature",
                                 "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "signature NOT checked (--no-signature)" in result.output
    assert "parity gate: passed" in result.output
    assert not any(c in result.output for c in CHATTER), result.output


def test_verify_with_no_signature_still_refuses_a_changed_file(bundle_without_keys, data_dir):
    from tests.support.bundles import flip_byte

    flip_byte(bundle_without_keys / "model.keras", 200)
    result = runner.invoke(app, ["verify", str(bundle_without_keys), "--no-signature",
                                 "--data", str(data_dir)])
    assert result.exit_code == 2 and "model.keras" in result.output


def test_verify_reads_the_data_folder_from_the_environment(bundle_without_keys, tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    result = runner.invoke(app, ["verify", str(bundle_without_keys), "--no-signature"],
                           env={DATA_ENV: str(empty)})
    assert result.exit_code == 2 and str(empty) in result.output, result.output


# --------------------------------------------------------------------------- keygen, help

def test_keygen_creates_missing_folders(tmp_path):
    private, public = tmp_path / "secret" / "keys" / "pdm.pem", tmp_path / "pub" / "pdm.pub"
    result = runner.invoke(app, ["keygen", str(private), str(public)])
    assert result.exit_code == 0, result.output
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) & 0o077 == 0


def test_keygen_says_why_it_cannot_write(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["keygen", str(blocker / "k.pem"), str(tmp_path / "k.pub")])
    assert result.exit_code == 2 and "cannot write the key pair" in result.output
    assert not (tmp_path / "k.pub").exists()


def test_every_option_that_reads_the_environment_shows_its_variable_in_help():
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    with_env = []
    for name, sub in command.commands.items():
        for param in sub.params:
            if getattr(param, "envvar", None):
                assert param.show_envvar, f"{name} {param.name}"
                with_env.append((name, param.envvar))
        if any(p.name == "data" for p in sub.params):  # default_data_dir reads PDM_DATA_DIR
            assert (name, DATA_ENV) in with_env, name
    assert {n for n, _ in with_env} == {"train", "verify", "report"}
    for name, envvar in with_env:
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert f"env var: {envvar}" in " ".join(result.output.split()), result.output


# --------------------------------------------------------------------------- train

def test_the_log_sits_beside_the_bundle_folder(tmp_path):
    assert default_log(tmp_path / "models" / "mine") == tmp_path / "models" / "mine.train.log"


@pytest.mark.slow
def test_train_refuses_a_model_below_the_floor_and_keeps_the_chatter_in_its_log(tmp_path):
    """A fresh process (TensorFlow's import chatter included): one epoch on 8 engines cannot
    reach RUL RMSE 1, so nothing is written and the one error line names the figure."""
    if not (DATA_DIR / "train_FD001.txt").exists():
        pytest.skip(f"C-MAPSS data not found in {DATA_DIR}")
    out = tmp_path / "weak"
    proc = subprocess.run(
        [sys.executable, "-m", "converter", "train", "--data", str(DATA_DIR), "--out", str(out),
         "--max-units", "8", "--epochs", "1", "--window", "20", "--lstm1", "8", "--lstm2", "4",
         "--quantize", "float16", "--max-rmse", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 1, shown
    errors = [line for line in shown.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "below the quality floor" in errors[0], shown
    assert "RUL RMSE" in errors[0] and "> 1.00" in errors[0] and "--allow-weak" in errors[0]
    assert not out.exists()
    assert "1/1 epochs" in shown and "models on the test set" in shown  # bar and table stay
    assert not any(c in shown for c in CHATTER), shown
    log = default_log(out).read_text()
    assert "Saved artifact" in log and "TensorSpec" in log
    assert "structure of `inputs`" not in log
