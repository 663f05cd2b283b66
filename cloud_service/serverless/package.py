"""The zip build of the functions: what a handler imports, measured against Lambda's limits.

`python -m cloud_service.serverless.package --out lambda.zip` starts the handler in a fresh
interpreter, loads the model and answers one request, collects the installed distributions of
every module that process imported (plus the project's packages and the bundle), writes them
into a zip and prints its size against Lambda's limits: 250 MB unzipped (function and layers),
50 MB zipped for a direct upload. The same measure gives the benchmark's `package_mb`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
UNZIPPED_LIMIT_MB = 250.0
ZIPPED_LIMIT_MB = 50.0
PROJECT = ("cloud_service", "contract")
_PROBE = """
import json, sys
import numpy as np
from cloud_service.serverless import http
m = http.get_model().manifest
from contract.preprocess import Normaliser
http.score(Normaliser.of(m).neutral_rows(m.window)[None])
import cloud_service.serverless.iot, awslambdaric
import cloud_service.store.postgres, psycopg_pool  # the IoT function's store
try:
    import psycopg_binary
except ImportError:
    pass
print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))
"""


def imported_modules(runtime: str = "litert", env: dict | None = None) -> list[str]:
    """Top-level modules a warm handler process has imported."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), PDM_MODEL_RUNTIME=runtime,
                                  **(env or {})))
    return json.loads(out.stdout.strip().splitlines()[-1])


def files_of(modules: list[str]) -> dict[str, Path]:
    """Archive name -> file, for the distributions providing `modules` and the project."""
    owners = metadata.packages_distributions()
    dists = {d for m in modules for d in owners.get(m, ())}
    files: dict[str, Path] = {}
    for name in sorted(dists):
        dist = metadata.distribution(name)
        for f in dist.files or ():
            path = Path(str(dist.locate_file(f)))
            if path.is_file() and "__pycache__" not in f.parts:
                files[str(f)] = path
    for pkg in PROJECT:
        for path in (REPO / pkg).rglob("*.py"):
            files[str(path.relative_to(REPO))] = path
    return files


def bundle_files(bundle: Path, key: Path) -> dict[str, Path]:
    # The whole bundle: the signed manifest lists every file and verification wants them all
    # (the Keras model is small beside the runtime).
    files = {f"bundle/{p.name}": p for p in bundle.iterdir() if p.is_file()}
    files["bundle_signing_key.pub"] = key
    return files


def unzipped_mb(files: dict[str, Path]) -> float:
    return sum(p.stat().st_size for p in files.values()) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud_service.serverless.package")
    ap.add_argument("--out", type=Path, default=Path("lambda.zip"))
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--key", type=Path, default=REPO / "models" / "default_signing_key.pub")
    args = ap.parse_args(argv)
    env = {"PDM_BUNDLE": str(args.bundle), "PDM_BUNDLE_KEY": str(args.key)}
    files = files_of(imported_modules(env=env)) | bundle_files(args.bundle, args.key)
    with zipfile.ZipFile(args.out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, path in sorted(files.items()):
            zf.write(path, name)
    raw, packed = unzipped_mb(files), args.out.stat().st_size / 1e6
    print(f"{args.out}: {len(files)} files, {raw:.1f} MB unzipped (Lambda limit "
          f"{UNZIPPED_LIMIT_MB:.0f} MB: {'fits' if raw <= UNZIPPED_LIMIT_MB else 'TOO BIG'}), "
          f"{packed:.1f} MB zipped (direct upload limit {ZIPPED_LIMIT_MB:.0f} MB: "
          f"{'fits' if packed <= ZIPPED_LIMIT_MB else 'upload through S3'})")
    print("bundle baked in at bundle/: set PDM_BUNDLE=/var/task/bundle, "
          "PDM_BUNDLE_KEY=/var/task/bundle_signing_key.pub; handler "
          "cloud_service.serverless.http.handler or cloud_service.serverless.iot.handler")
    return 0 if raw <= UNZIPPED_LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
