"""The fleet side: MQTT ingest, idempotent store, batched full-LSTM scoring, alerts, REST API."""

__version__ = "0.1.0"
