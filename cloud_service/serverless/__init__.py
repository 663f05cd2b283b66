"""Scoring on AWS Lambda: an HTTP scoring function and an IoT Core rule function.

Both run the bundle's float TFLite model through LiteRT (no TensorFlow in the function), loaded
once per execution environment after the bundle's signature and hashes are checked. The
windows are normalised exactly as the container normalises them (`contract.preprocess` via the
manifest), so both paths give the same scores for the same windows. See docs/serverless.md.
"""

from __future__ import annotations


class ServerlessError(Exception):
    """A function cannot start or cannot serve a request; the message says why."""
