"""Alert webhooks: which webhooks hear of an alert, what they are sent, and the worker that
sends it.

Delivery never holds up scoring or ingest. The scorer only adds one queue row per alert and
webhook to the transaction that stores the alert (`plan_deliveries`), so an alert that is
stored is also queued, and one that is not (the asset was taken over) is not. A worker thread
per replica (`WebhookSender`) claims due rows, POSTs them and records the outcome; a failure
is retried with exponential backoff (with jitter, capped) until `give_up_after`. A claim makes
one replica the only sender of a row for a while (on PostgreSQL, `FOR UPDATE SKIP LOCKED`, so
replicas never wait for each other); a replica that dies mid-claim leaves the row to be claimed
again when the claim lapses.

Each row is sent until one attempt is acknowledged with a 2xx, and then never again. Its
`X-PDM-Delivery` header (also `delivery_id` in the generic body) is derived from the alert and
the webhook, the same on every attempt and every replica: a receiver that answered but whose
answer was lost (the only case that sends a row twice) can drop the repeat by that key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from cloud_service.config import NotificationsConfig, WebhookConfig
from cloud_service.metrics import Metrics
from cloud_service.store import ClaimedDelivery, DeliveryQueue, StoreError, WebhookDelivery
from contract import codec
from contract.payloads import AlertEvent, AlertState

log = logging.getLogger(__name__)
# Delivery ids are UUIDs named by the alert and the webhook under this namespace.
DELIVERY_NAMESPACE = uuid.UUID("5d0c6a8e-57a4-4c55-9b35-7c4a1f0d2e61")
USER_AGENT = "pdm-cloud-webhooks/1"
BODY_SCHEMA = 1
MAX_ERROR = 300  # characters of a receiver's answer kept with a failed attempt
SLACK_ICONS = {AlertState.NORMAL: ":white_check_mark:", AlertState.WARNING: ":warning:",
               AlertState.CRITICAL: ":rotating_light:"}


class NotificationError(Exception):
    """A queued delivery that cannot be sent as stored (its webhook is gone, its alert
    unreadable)."""


# -- the pure core --------------------------------------------------------------------------

def delivery_id(webhook: str, event: AlertEvent) -> str:
    """The same for one alert and one webhook wherever and however often it is computed."""
    name = "\0".join((webhook, event.source, event.gateway, event.asset, str(event.seq)))
    return str(uuid.uuid5(DELIVERY_NAMESPACE, name))


def webhooks_for(state: AlertState, webhooks: Sequence[WebhookConfig]) -> list[WebhookConfig]:
    """The webhooks that want alerts of this severity (the state the asset moved to)."""
    return [w for w in webhooks if state in w.severities]


def plan_deliveries(event: AlertEvent, webhooks: Sequence[WebhookConfig]
                    ) -> list[WebhookDelivery]:
    """The queue rows for one alert state change: one per webhook that wants its severity.
    Verdicts on escalated windows move no state and notify no one."""
    if event.kind != "transition" or event.old_state == event.new_state:
        return []
    body = codec.encode_json(event).decode()
    return [WebhookDelivery(delivery_id=delivery_id(w.name, event), webhook=w.name,
                            gateway=event.gateway, asset=event.asset, event=body,
                            created_at=event.published_at)
            for w in webhooks_for(event.new_state, webhooks)]


def summary(event: AlertEvent) -> str:
    """One line a person reads in a chat or a pager."""
    rul = f", RUL {event.rul:.0f} cycles" if event.rul is not None else ""
    return (f"{event.new_state.value}: {event.asset} on {event.gateway} went "
            f"{event.old_state.value} -> {event.new_state.value} (failure probability "
            f"{event.probability:.2f}{rul}, {event.source} model {event.model_version})")


def generic_body(event: AlertEvent, webhook: str, delivery: str) -> dict:
    """The alert as the cloud-alert topic carries it, with the delivery's key."""
    return {"schema_version": BODY_SCHEMA, "delivery_id": delivery, "webhook": webhook,
            "severity": event.new_state.value, "summary": summary(event),
            "alert": event.model_dump(mode="json")}


def slack_body(event: AlertEvent, delivery: str) -> dict:
    """A Slack incoming-webhook message: `text` for notifications, `blocks` for the channel."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.tick_time))
    rul = f"{event.rul:.0f} cycles" if event.rul is not None else "n/a"
    fields = [("Asset", f"{event.gateway} / {event.asset}"),
              ("State", f"{event.old_state.value} -> {event.new_state.value}"),
              ("Failure probability", f"{event.probability:.2f}"),
              ("Remaining useful life", rul)]
    return {
        "text": summary(event),
        "blocks": [
            {"type": "header", "text": {
                "type": "plain_text",
                "text": f"{event.new_state.value}: {event.asset} on {event.gateway}"}},
            {"type": "section", "text": {
                "type": "mrkdwn",
                "text": f"{SLACK_ICONS[event.new_state]} *{event.asset}* on *{event.gateway}* "
                        f"is now *{event.new_state.value}*"},
             "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields]},
            {"type": "context", "elements": [{
                "type": "mrkdwn",
                "text": f"tick {event.seq} at {when} · {event.source} model "
                        f"{event.model_version} · delivery {delivery}"}]},
        ],
    }


def render(webhook: WebhookConfig, event: AlertEvent, delivery: str) -> bytes:
    body = (slack_body(event, delivery) if webhook.format == "slack"
            else generic_body(event, webhook.name, delivery))
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def request_headers(webhook: WebhookConfig, body: bytes, delivery: str,
                    attempt: int) -> dict[str, str]:
    headers = {name: value.get_secret_value() for name, value in webhook.headers.items()}
    headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT,
                    "X-PDM-Delivery": delivery, "X-PDM-Attempt": str(attempt)})
    if webhook.secret is not None:
        digest = hmac.new(webhook.secret.get_secret_value().encode(), body, hashlib.sha256)
        headers["X-PDM-Signature"] = f"sha256={digest.hexdigest()}"
    return headers


def retry_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Seconds before the next try after `attempt` failed ones: doubling from `low`, capped at
    `high`, half of it random ("equal jitter") so receivers that come back are not hit by every
    queued delivery at once."""
    ceiling = min(high, low * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Outcome:
    """What one attempt did: delivered, or why not (a short reason for the metric label, and
    the detail for the log and the queue row)."""

    delivered: bool
    reason: str = ""
    detail: str = ""


# -- the adapter: HTTP and the store --------------------------------------------------------

class WebhookSender:
    """The worker thread that drains the delivery queue of the store."""

    def __init__(self, store: DeliveryQueue, cfg: NotificationsConfig, metrics: Metrics,
                 replica: str, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.metrics = metrics
        self.replica = replica
        self.clock = clock
        self.rng = rng or random.Random()
        self.webhooks = {w.name: w for w in cfg.webhooks}
        # Claims outlast the POSTs of a whole batch, so no other replica takes a row this one
        # is still sending.
        self.hold = cfg.batch * (cfg.timeout + 1) + 10
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=cfg.timeout, follow_redirects=False)
        for name in self.webhooks:
            for outcome in ("delivered", "failed", "gave_up"):
                metrics.webhook_deliveries.labels(name, outcome)

    def plan(self, event: AlertEvent) -> list[WebhookDelivery]:
        """The queue rows for a cloud alert (the scorer adds them to its store write)."""
        return plan_deliveries(event, self.cfg.webhooks)

    def wake(self) -> None:
        """New rows were queued: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the attempt in flight; rows still claimed are released by their claim
        lapsing (or sent by this replica when it comes back)."""
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(self.cfg.timeout + 10)
        self._client.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                sent = self.drain_once()
                self.metrics.webhook_queue.set(self.store.pending_deliveries())
            except StoreError as exc:
                sent = 0
                self.metrics.store_errors.labels("webhooks").inc()
                log.warning("webhook queue unavailable (%s); trying again", exc)
            except Exception:
                sent = 0
                log.exception("webhook worker failed; trying again")
            if not sent:
                self._wake.wait(self.cfg.poll_interval)

    def drain_once(self) -> int:
        """Claim the deliveries due and attempt each once; how many were attempted."""
        claimed = self.store.claim_deliveries(self.replica, self.cfg.batch, self.hold)
        for delivery in claimed:
            if self._stopping.is_set():
                break
            self.attempt(delivery)
        return len(claimed)

    def attempt(self, delivery: ClaimedDelivery) -> Outcome:
        """POST one delivery and record the outcome in the store and the metrics."""
        name = delivery.webhook
        try:
            outcome = self._post(delivery)
        except NotificationError as exc:
            self.store.finish_delivery(delivery.id, self.replica, delivered=False,
                                       error=str(exc))
            self.metrics.webhook_failures.labels(name, "unsendable").inc()
            self.metrics.webhook_deliveries.labels(name, "gave_up").inc()
            log.error("webhook delivery %s given up: %s", delivery.delivery_id, exc)
            return Outcome(False, "unsendable", str(exc))
        if outcome.delivered:
            if not self.store.finish_delivery(delivery.id, self.replica, delivered=True):
                log.warning("webhook delivery %s was sent after its claim lapsed",
                            delivery.delivery_id)
            self.metrics.webhook_deliveries.labels(name, "delivered").inc()
            return outcome
        self.metrics.webhook_failures.labels(name, outcome.reason).inc()
        attempts = delivery.attempts + 1
        if self.clock() - delivery.created_at >= self.cfg.give_up_after:
            self.store.finish_delivery(delivery.id, self.replica, delivered=False,
                                       error=outcome.detail)
            self.metrics.webhook_deliveries.labels(name, "gave_up").inc()
            log.error("webhook %s: delivery %s given up after %d attempts: %s", name,
                      delivery.delivery_id, attempts, outcome.detail)
            return outcome
        delay = retry_delay(attempts, self.cfg.retry_min_delay, self.cfg.retry_max_delay,
                            self.rng)
        self.store.retry_delivery(delivery.id, self.replica, delay, outcome.detail)
        self.metrics.webhook_deliveries.labels(name, "failed").inc()
        log.warning("webhook %s: delivery %s attempt %d failed (%s); next in %.1f s", name,
                    delivery.delivery_id, attempts, outcome.detail, delay)
        return outcome

    def _post(self, delivery: ClaimedDelivery) -> Outcome:
        webhook = self.webhooks.get(delivery.webhook)
        if webhook is None:
            raise NotificationError(f"webhook {delivery.webhook!r} is no longer configured")
        try:
            event = codec.decode_json(delivery.event.encode(), AlertEvent)
        except ValueError as exc:
            raise NotificationError(f"the queued alert cannot be read: {exc}") from None
        body = render(webhook, event, delivery.delivery_id)
        headers = request_headers(webhook, body, delivery.delivery_id, delivery.attempts + 1)
        started = time.perf_counter()
        try:
            answer = self._client.post(webhook.url.get_secret_value(), content=body,
                                       headers=headers)
        except httpx.TimeoutException:
            return Outcome(False, "timeout", f"no answer within {self.cfg.timeout:g} s")
        except httpx.TransportError as exc:
            return Outcome(False, "connect", f"cannot reach the receiver: {exc}")
        finally:
            self.metrics.webhook_seconds.labels(delivery.webhook).observe(
                time.perf_counter() - started)
        if 200 <= answer.status_code < 300:
            return Outcome(True)
        text = " ".join(answer.text.split())[:MAX_ERROR]
        return Outcome(False, f"http_{answer.status_code}",
                       f"HTTP {answer.status_code}{': ' + text if text else ''}")
