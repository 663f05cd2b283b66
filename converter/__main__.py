import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the output

from contract.cli import run_app  # noqa: E402
from converter.cli import app  # noqa: E402

run_app(app, "python -m converter")
