"""Reads whose SQL is the same on both backends but for the parameter mark (`?` in SQLite,
`%s` in psycopg): the fleet, models and rollouts the API reads, the scorer's list of owned
assets, and the API's one small write (acknowledging an alert). Each backend inherits them and
supplies `_rows` (dict rows), `_write` (one transaction) and `feature_set`."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, cast

import numpy as np

from cloud_service.ownership import OwnedAsset
from cloud_service.store.base import AlertAlreadyAcknowledged, AlertNotFound
from cloud_service.store.rows import (
    AssetRow,
    DeadLetterRow,
    GatewayRow,
    ModelRow,
    RolloutRow,
    RolloutTargetRow,
    StoredAlert,
    StoredDrift,
    StoredDriftEvent,
    StoredPrediction,
    TickRow,
)
from contract.alerting import MachineState
from contract.payloads import AlertState


class SharedReads:
    MARK: ClassVar[str]

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def feature_set(self, feature_set_id: int) -> tuple[str, ...]:
        raise NotImplementedError

    def gateways(self) -> list[GatewayRow]:
        return cast(list[GatewayRow], self._rows(
            "SELECT g.gateway, g.online, g.status_time, g.first_seen, g.last_seen, "
            "g.model_version, g.agent_version, "
            "(SELECT count(*) FROM assets a WHERE a.gateway = g.gateway) AS assets "
            "FROM gateways g ORDER BY g.gateway"))

    def assets(self, gateway: str | None = None,
               state: str | None = None) -> list[AssetRow]:
        """Every asset, or those of one gateway, or those in one cloud alert state."""
        m = self.MARK
        sql, params = "SELECT * FROM assets WHERE TRUE", []
        for condition, value in ((f"gateway = {m}", gateway), (f"cloud_state = {m}", state)):
            if value is not None:
                sql += f" AND {condition}"
                params.append(value)
        return cast(list[AssetRow], self._rows(sql + " ORDER BY gateway, asset", params))

    def asset(self, gateway: str, asset: str) -> AssetRow | None:
        m = self.MARK
        rows = self._rows(f"SELECT * FROM assets WHERE gateway = {m} AND asset = {m}",
                          (gateway, asset))
        return cast(AssetRow, rows[0]) if rows else None

    def dead_letter_counts(self) -> dict[str, int]:
        return {r["reason"]: r["n"] for r in self._rows(
            "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason")}

    def models(self) -> list[ModelRow]:
        return cast(list[ModelRow],
                    self._rows("SELECT * FROM models ORDER BY registered_at, version"))

    def model(self, version: str) -> ModelRow | None:
        rows = self._rows(f"SELECT * FROM models WHERE version = {self.MARK}", (version,))
        return cast(ModelRow, rows[0]) if rows else None

    def rollouts(self) -> list[RolloutRow]:
        return cast(list[RolloutRow], self._rows("SELECT * FROM rollouts ORDER BY created_at, id"))

    def rollout(self, rollout_id: str) -> RolloutRow | None:
        rows = self._rows(f"SELECT * FROM rollouts WHERE id = {self.MARK}", (rollout_id,))
        return cast(RolloutRow, rows[0]) if rows else None

    def rollout_targets(self, rollout_id: str) -> list[RolloutTargetRow]:
        return cast(list[RolloutTargetRow], self._rows(
            f"SELECT * FROM rollout_targets WHERE rollout_id = {self.MARK} ORDER BY gateway",
            (rollout_id,)))

    def ticks(self, gateway: str, asset: str, after_seq: int, to_seq: int | None,
              since: float | None, until: float | None, limit: int) -> list[TickRow]:
        m = self.MARK
        sql = ("SELECT seq, time, feature_set, vals, edge_probability, edge_rul, model_version, "
               f"received_at FROM ticks WHERE gateway = {m} AND asset = {m} AND seq > {m}")
        params: list[Any] = [gateway, asset, after_seq]
        for condition, value in ((f"seq <= {m}", to_seq), (f"time >= {m}", since),
                                 (f"time < {m}", until)):
            if value is not None:
                sql += f" AND {condition}"
                params.append(value)
        sql += f" ORDER BY seq LIMIT {m}"
        params.append(limit)
        out = []
        for r in self._rows(sql, params):
            names = self.feature_set(r.pop("feature_set"))
            vals = np.frombuffer(r.pop("vals"), "<f4")
            r["values"] = dict(zip(names, map(float, vals), strict=True))
            out.append(cast(TickRow, r))
        return out

    def predictions(self, gateway: str, asset: str, after_seq: int, to_seq: int | None,
                    limit: int) -> list[StoredPrediction]:
        m = self.MARK
        sql = f"SELECT * FROM predictions WHERE gateway = {m} AND asset = {m} AND seq > {m}"
        params: list[Any] = [gateway, asset, after_seq]
        if to_seq is not None:
            sql += f" AND seq <= {m}"
            params.append(to_seq)
        sql += f" ORDER BY seq LIMIT {m}"
        params.append(limit)
        return cast(list[StoredPrediction], self._rows(sql, params))

    def alerts(self, gateway: str | None, asset: str | None, state: str | None,
               since: float | None, after_id: int, limit: int,
               acknowledged: bool | None = None) -> list[StoredAlert]:
        m = self.MARK
        sql = f"SELECT * FROM alerts WHERE id > {m}"
        params: list[Any] = [after_id]
        for condition, value in ((f"gateway = {m}", gateway), (f"asset = {m}", asset),
                                 (f"new_state = {m}", state), (f"published_at >= {m}", since)):
            if value is not None:
                sql += f" AND {condition}"
                params.append(value)
        if acknowledged is not None:
            sql += f" AND acknowledged_at IS {'NOT ' if acknowledged else ''}NULL"
        sql += f" ORDER BY id LIMIT {m}"
        params.append(limit)
        return cast(list[StoredAlert], self._rows(sql, params))

    def acknowledge_alert(self, alert_id: int, by: str, note: str,
                          at: float) -> StoredAlert:
        """Once only: the update takes the row only while nobody has acknowledged it, so of two
        operators at the same moment one wins and the other is told who."""
        m = self.MARK
        with self._write() as conn:
            taken = conn.execute(
                f"UPDATE alerts SET acknowledged_by = {m}, acknowledged_at = {m}, "
                f"ack_note = {m} WHERE id = {m} AND acknowledged_at IS NULL RETURNING id",
                (by, at, note, alert_id)).fetchone()
        rows = self._rows(f"SELECT * FROM alerts WHERE id = {m}", (alert_id,))
        if not rows:
            raise AlertNotFound(f"no alert {alert_id}")
        row = cast(StoredAlert, rows[0])
        if taken is None:
            raise AlertAlreadyAcknowledged(row)
        return row

    def asset_drift(self, gateway: str, asset: str) -> StoredDrift | None:
        m = self.MARK
        rows = self._rows(f"SELECT * FROM asset_drift WHERE gateway = {m} AND asset = {m}",
                          (gateway, asset))
        return cast(StoredDrift, rows[0]) if rows else None

    def asset_drifts(self, gateway: str | None = None) -> list[StoredDrift]:
        """The latest drift check of every asset (of one gateway) that has one."""
        if gateway is None:
            return cast(list[StoredDrift], self._rows(
                "SELECT * FROM asset_drift ORDER BY gateway, asset"))
        return cast(list[StoredDrift], self._rows(
            f"SELECT * FROM asset_drift WHERE gateway = {self.MARK} ORDER BY asset", (gateway,)))

    def drift_events(self, gateway: str | None, asset: str | None, kind: str | None,
                     after_id: int, limit: int) -> list[StoredDriftEvent]:
        m = self.MARK
        sql = f"SELECT * FROM drift_events WHERE id > {m}"
        params: list[Any] = [after_id]
        for condition, value in ((f"gateway = {m}", gateway), (f"asset = {m}", asset),
                                 (f"kind = {m}", kind)):
            if value is not None:
                sql += f" AND {condition}"
                params.append(value)
        sql += f" ORDER BY id LIMIT {m}"
        params.append(limit)
        return cast(list[StoredDriftEvent], self._rows(sql, params))

    def dead_letters(self, reason: str | None, after_id: int,
                     limit: int) -> list[DeadLetterRow]:
        m = self.MARK
        sql = f"SELECT * FROM dead_letters WHERE id > {m}"
        params: list[Any] = [after_id]
        if reason is not None:
            sql += f" AND reason = {m}"
            params.append(reason)
        sql += f" ORDER BY id LIMIT {m}"
        params.append(limit)
        return cast(list[DeadLetterRow], self._rows(sql, params))

    def owned_assets(self, replica: str, seen_since: float | None = None) -> list[OwnedAsset]:
        """The assets this replica owns (those that received ticks since `seen_since` only,
        when given), with their scoring position and alert machine state."""
        m = self.MARK
        sql = ("SELECT gateway, asset, ticks, last_seq, cloud_seq, cloud_state, cloud_pending, "
               f"cloud_pending_count, cloud_state_since FROM assets WHERE owner = {m}")
        params: list[Any] = [replica]
        if seen_since is not None:
            sql += f" AND last_seen >= {m}"
            params.append(seen_since)
        return [OwnedAsset(
            key=(r["gateway"], r["asset"]), ticks=r["ticks"], last_seq=r["last_seq"],
            scored_seq=r["cloud_seq"],
            machine=MachineState(AlertState(r["cloud_state"] or "NORMAL"),
                                 AlertState(r["cloud_pending"]) if r["cloud_pending"] else None,
                                 r["cloud_pending_count"] or 0),
            state_since=r["cloud_state_since"])
            for r in self._rows(sql, params)]
