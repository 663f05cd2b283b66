"""The tflite-runtime fallback (for gateways LiteRT has no wheel for): tflite-runtime 2.14 in
its own venv (numpy < 2) loads the full-int8 and float models of the default bundle and gives
the same outputs as LiteRT."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from contract.bundle import read_manifest
from contract.cmapss import COLUMNS
from contract.preprocess import normalised_window
from edge_agent.scorer import Scorer
from edge_agent.sources.replay import unit_rows
from tests.conftest import DEFAULT_BUNDLE, REPO

pytestmark = pytest.mark.skipif(
    not (DEFAULT_BUNDLE / "manifest.json").exists() or sys.version_info >= (3, 12),
    reason="needs the default bundle; tflite-runtime 2.14 has wheels for Python <= 3.11 only")

PROBE = """
import json, sys
import numpy as np
sys.path.insert(0, {repo!r})
from contract.bundle import read_manifest
from contract.cmapss import COLUMNS
from contract.preprocess import normalised_window
from edge_agent.scorer import Scorer, ModelLoadError
m = read_manifest({bundle!r})
out = {{}}
for name in {files!r}:
    try:
        s = Scorer({bundle!r} + "/" + name, m)
        w = np.load({windows!r})
        out[name] = {{"runtime": s.runtime, "y": [s.raw(x).tolist() for x in w]}}
    except ModelLoadError as exc:
        out[name] = {{"error": str(exc)}}
print(json.dumps(out))
"""


def last_windows(manifest, units: int = 100) -> np.ndarray:
    """The last window of each FD001 test unit (the data committed with the repository)."""
    by_unit = unit_rows(REPO / "data" / "cmapss" / "test_FD001.txt")
    cols = [COLUMNS.index(f) for f in manifest.features]
    return np.stack([normalised_window(by_unit[u][:, cols], manifest)
                     for u in sorted(by_unit)[:units]])


@pytest.fixture(scope="session")
def tflite_runtime_python(tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("tflite-runtime-venv")
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "tflite-runtime==2.14.0",
                    "numpy<2", "pydantic>=2.7", "msgpack", "cryptography", "pyyaml", "packaging"],
                   check=True, timeout=600)
    return py


def test_int8_and_float_models_load_in_tflite_runtime_and_match_litert(
        tmp_path, tflite_runtime_python):
    manifest = read_manifest(DEFAULT_BUNDLE)
    windows = last_windows(manifest)
    np.save(tmp_path / "w.npy", windows)
    files = sorted({manifest.edge.file, "model_float.tflite"})
    code = PROBE.format(repo=str(REPO), bundle=str(DEFAULT_BUNDLE), files=files,
                        windows=str(tmp_path / "w.npy"))
    out = subprocess.run([str(tflite_runtime_python), "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name in files:
        res = results[name]
        if manifest.edge.quantization == "dynamic" and name == manifest.edge.file:
            assert "cannot run dynamic-range models" in res["error"]
            continue
        assert res["runtime"] == "tflite_runtime", res
        ours = np.array([Scorer(DEFAULT_BUNDLE / name, manifest).raw(w) for w in windows])
        theirs = np.array(res["y"])
        if name == "model_float.tflite":
            np.testing.assert_allclose(theirs, ours, atol=1e-5)
            continue
        # Integer kernels differ between the runtimes by a few quantization steps; what counts
        # is that the decisions agree and the scores stay close.
        cut = manifest.thresholds.decision
        agree = np.mean((theirs[:, 0] >= cut) == (ours[:, 0] >= cut))
        print(f"{name}: decisions agree {agree:.1%}, mean |dp| "
              f"{np.abs(theirs[:, 0] - ours[:, 0]).mean():.4f}")
        assert agree >= 0.97
        assert np.abs(theirs - ours).mean() <= 0.03
