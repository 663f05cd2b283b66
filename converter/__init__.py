"""Train the full LSTM, quantize it for the edge, prove parity and write signed model bundles."""

__version__ = "0.1.0"
