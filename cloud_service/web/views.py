"""What the pages show, computed from store rows with no I/O: the fleet table (joined with each
gateway's online state, filtered and sorted), the alert list and the asset's sensor names.

Kept apart from the routes so the rules (which state sorts first, where an unscored asset goes,
what a text filter matches) are plain functions a unit test reads directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cloud_service.store import AssetRow, GatewayRow, StoredDrift

STATES = ("CRITICAL", "WARNING", "NORMAL")
UNSCORED = "UNSCORED"  # an asset the cloud has not scored yet (fewer ticks than a window)
StateFilter = Literal["CRITICAL", "WARNING", "NORMAL", "UNSCORED"]
FleetSort = Literal["state", "rul", "probability", "last_seen", "asset", "gateway", "drift"]
AlertStateName = Literal["CRITICAL", "WARNING", "NORMAL"]
Period = Literal["1h", "24h", "7d", "30d", "all"]
SEVERITY = {"CRITICAL": 0, "WARNING": 1, "NORMAL": 2}
MAX_ROWS = 1000  # rows one page renders; the summary still counts every asset


@dataclass(frozen=True)
class FleetQuery:
    state: StateFilter | None = None
    gateway: str | None = None
    text: str = ""
    sort: FleetSort = "state"
    descending: bool = False


@dataclass(frozen=True)
class AlertQuery:
    state: AlertStateName | None = None  # the state moved to
    gateway: str | None = None
    asset: str | None = None
    acknowledged: Literal["", "yes", "no"] = ""  # "": either
    period: Period = "7d"


@dataclass(frozen=True)
class FleetRow:
    gateway: str
    asset: str
    state: str | None
    state_since: float | None
    rul: float | None
    probability: float | None
    edge_rul: float | None
    edge_probability: float | None
    last_seen: float | None
    ticks: int
    model_version: str | None
    gateway_online: bool | None  # None: the gateway never sent a status
    drift_state: str | None = None  # input drift (ok, watch, drift, unavailable); None: unchecked
    drift_score: float | None = None


@dataclass(frozen=True)
class FleetView:
    rows: list[FleetRow]
    matched: int  # rows that pass the filter (rows holds at most MAX_ROWS of them)
    total: int
    states: dict[str, int]  # every asset, by state (UNSCORED included)
    gateways: list[str]
    gateways_online: int
    gateways_known: int


def gateway_status(gateways: Iterable[GatewayRow]) -> dict[str, bool | None]:
    """Online (True), offline (False) or never said (None), by gateway."""
    return {g["gateway"]: None if g["online"] is None else bool(g["online"]) for g in gateways}


def fleet_rows(assets: Iterable[AssetRow], gateways: Iterable[GatewayRow],
               drifts: Iterable[StoredDrift] = ()) -> list[FleetRow]:
    online = gateway_status(gateways)
    drift = {(d["gateway"], d["asset"]): d for d in drifts}
    return [FleetRow(
        gateway=a["gateway"], asset=a["asset"], state=a["cloud_state"],
        state_since=a["cloud_state_since"], rul=a["cloud_rul"], probability=a["cloud_probability"],
        edge_rul=a["edge_rul"], edge_probability=a["edge_probability"], last_seen=a["last_seen"],
        ticks=a["ticks"] or 0, model_version=a["cloud_model_version"],
        gateway_online=online.get(a["gateway"]),
        drift_state=(drift[a["gateway"], a["asset"]]["state"]
                     if (a["gateway"], a["asset"]) in drift else None),
        drift_score=(drift[a["gateway"], a["asset"]]["score"]
                     if (a["gateway"], a["asset"]) in drift else None)) for a in assets]


def _matches(row: FleetRow, query: FleetQuery) -> bool:
    if query.state is not None and (row.state or UNSCORED) != query.state:
        return False
    if query.gateway is not None and row.gateway != query.gateway:
        return False
    text = query.text.strip().lower()
    return not text or text in row.asset.lower() or text in row.gateway.lower()


def _sort_key(row: FleetRow, sort: FleetSort) -> tuple:
    """The key of one column; ties are broken by the most urgent first, then by name."""
    urgency = (SEVERITY.get(row.state or "", 3), -(row.probability or 0.0))
    name = (row.gateway, row.asset)
    if sort == "state":
        return (*urgency, *name)
    if sort == "asset":
        return (row.asset, row.gateway)
    if sort == "gateway":
        return name
    value = {"rul": row.rul, "probability": row.probability, "last_seen": row.last_seen,
             "drift": row.drift_score}[sort]
    return (value, *urgency, *name)


def select_fleet(rows: Sequence[FleetRow], query: FleetQuery, max_rows: int = MAX_ROWS,
                 gateways: Mapping[str, bool | None] | None = None) -> FleetView:
    """Filter and sort. Assets with no value in the sorted column go last in either order.
    `gateways`: every known gateway's online state (also those with no asset yet); by
    default the gateways of `rows`."""
    states = {state: 0 for state in (*STATES, UNSCORED)}
    for row in rows:
        states[row.state or UNSCORED] = states.get(row.state or UNSCORED, 0) + 1
    matched = [row for row in rows if _matches(row, query)]
    if query.sort in ("rul", "probability", "last_seen", "drift"):
        column = "drift_score" if query.sort == "drift" else query.sort
        present = [r for r in matched if getattr(r, column) is not None]
        missing = [r for r in matched if getattr(r, column) is None]
        present.sort(key=lambda r: _sort_key(r, query.sort), reverse=query.descending)
        missing.sort(key=lambda r: _sort_key(r, "state"))
        ordered = present + missing
    else:
        ordered = sorted(matched, key=lambda r: _sort_key(r, query.sort),
                         reverse=query.descending)
    status = dict(gateways) if gateways is not None else {
        r.gateway: r.gateway_online for r in rows}
    return FleetView(rows=ordered[:max_rows], matched=len(matched), total=len(rows),
                     states=states, gateways=sorted(status),
                     gateways_online=sum(1 for v in status.values() if v),
                     gateways_known=len(status))


def sensor_names(values: Mapping[str, float] | None) -> list[str]:
    """The features of an asset's latest tick, in the order the manifest gives them."""
    return list(values or {})
