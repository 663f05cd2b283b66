import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the output

from converter.cli import app  # noqa: E402

app()
