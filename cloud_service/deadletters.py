"""Why a payload was refused, as a short stable label (for metrics and filtering), next to the
full ContractError message (for the person reading the dead-letter table)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Checked in order; the first match wins. The messages come from contract.codec/payloads/topics.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE)) for reason, pattern in (
        ("gateway-mismatch", r"gateway mismatch"),
        ("bad-topic", r"^topic "),
        ("too-large", r"exceeds the \d+ limit|inflates beyond"),
        ("empty", r"payload is empty"),
        ("unknown-version", r"unknown schema version"),
        ("not-zlib", r"not valid zlib"),
        ("truncated", r"truncated"),
        ("trailing-bytes", r"trailing bytes"),
        ("not-msgpack", r"not valid msgpack|must be a msgpack map"),
        ("not-json", r"is not JSON|must be a JSON object"),
        ("bad-seq", r"first_seq|last seq|\bseq: "),
        ("bad-time", r"timestamps (has values outside|go backwards)"),
        ("bad-probability", r"probability has values outside"),
        ("bad-rul", r"remaining useful life\) has negative"),
        ("not-boolean", r"valid boolean"),
        ("bad-feature-name", r"feature name|features has|features\) must be"),
        ("missing-field", r"lacks field|field required|missing"),
        ("non-finite", r"NaN|infinity|finite number"),
        ("bad-shape", r"shape|entries, expected|numbers, expected|whole array|must be a vector"
                      r"|dimension|a batch holds"),
        ("bad-id", r"(gateway|asset) .* (contains|is empty|characters long)|gateway: |asset: "),
    )
)
REASONS = tuple(r for r, _ in _RULES) + ("invalid",)


def classify(message: str) -> str:
    """The label for a refusal message; 'invalid' when no rule knows it."""
    for reason, pattern in _RULES:
        if pattern.search(message):
            return reason
    return "invalid"


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    gateway: str | None
    reason: str
    detail: str
    size: int
    payload: bytes  # at most the configured number of bytes
    received_at: float

    @classmethod
    def of(cls, topic: str, gateway: str | None, detail: str, payload: bytes, keep: int,
           received_at: float, reason: str | None = None) -> DeadLetter:
        return cls(topic=topic, gateway=gateway, reason=reason or classify(detail),
                   detail=detail[:2000], size=len(payload), payload=bytes(payload[:keep]),
                   received_at=received_at)
