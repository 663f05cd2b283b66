#!/usr/bin/env bash
# End-to-end test of the container path with rootful podman, on a Debian machine without a
# Docker engine or a reachable registry (PyPI and the Debian mirror must be reachable):
#   1. podman, runc, containers.conf and the base images (podman-base.sh, cached);
#   2. builds the cloud and edge images (deploy/docker/Dockerfile, Dockerfile.edge);
#   3. image test: a Mosquitto container running the shipped config and ACL (mutual TLS, with a
#      PKI made by `python -m cloud_service pki`) and the cloud container on the host network
#      (on free ports), /healthz, /readyz and the image's HEALTHCHECK, then a real uplink batch
#      (C-MAPSS rows, the default bundle's features) published through the broker with a
#      gateway's certificate and read back from the API with the cloud model's predictions;
#   4. compose test: compose.yaml (+ compose.test.yaml, which swaps in a PostgreSQL image built
#      here from the same Debian base) up with podman-compose and `--scale cloud=2` (broker with
#      mutual TLS and the ACL, PostgreSQL, two cloud replicas, one edge agent replaying C-MAPSS
#      FD001, each client with its own certificate): two distinct client ids at the broker,
#      both replicas ingest a share of the uplink, edge alerts seen on MQTT by the gateway's
#      identity, and each replica's API serves the whole fleet; down -v.
# Everything it starts is removed on exit, whatever happens. Prints the time of each step and
# the image sizes. Run as root:  deploy/docker/test-image.sh
# Environment: PDM_PODMAN_CACHE (default /var/cache/pdm-podman), PDM_PYTHON (a Python with the
# project's dependencies for the host-side checks; default .venv/bin/python),
# PDM_TEST_SKIP_COMPOSE=1 (image test only), PDM_TEST_TIMEOUT (seconds per wait, default 180).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PDM_PYTHON:-$repo/.venv/bin/python}"
wait_s="${PDM_TEST_TIMEOUT:-180}"
[ "$(id -u)" = 0 ] || { echo "test-image.sh: run as root (rootful podman)" >&2; exit 2; }
[ -x "$py" ] || { echo "test-image.sh: no Python at $py (set PDM_PYTHON)" >&2; exit 2; }

run_id="pdmtest-$$"
work="$(mktemp -d "/tmp/$run_id.XXXXXX")"
containers=()          # started by the image test
compose_up=""          # set once podman-compose up ran
declare -a timings=()
t_start=$EPOCHREALTIME

log() { printf '\n==> %s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
step() {  # step "name" command...: runs it, records its time
  local name=$1 t0=$EPOCHREALTIME; shift
  log "$name"
  "$@"
  timings+=("$(printf '%-46s %7s s' "$name" "$(elapsed "$t0")")")
}

report() {
  echo
  echo "---- timings ($(if [ "${1:-0}" = 0 ]; then echo passed; else echo "FAILED, exit $1"; fi))"
  local t
  for t in "${timings[@]}"; do echo "  $t"; done
  printf '  %-46s %7s s\n' "total" "$(elapsed "$t_start")"
  if command -v podman >/dev/null; then
    echo "---- images"
    podman images --format '  {{printf "%-42s" (printf "%s:%s" .Repository .Tag)}} {{.Size}}' \
      2>/dev/null | grep -E 'pdm-|python|mosquitto|localdebian' || true
  fi
}

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ]; then
    for c in "${containers[@]}"; do
      echo "---- last log lines of $c"; podman logs --tail 40 "$c" 2>&1
    done
    if [ -n "$compose_up" ]; then
      echo "---- last log lines of the compose stack"
      compose logs --tail 30 2>&1 | tail -n 90
    fi
  fi
  [ "${#containers[@]}" -gt 0 ] && podman rm -f -v -t 3 "${containers[@]}" >/dev/null 2>&1
  [ -n "$compose_up" ] && compose_down 5 >/dev/null 2>&1
  rm -rf "$work"
  report "$rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

make_pki() {  # make_pki DIR GATEWAY: CA, broker (also named mosquitto), cloud, one gateway
  PYTHONPATH="$repo" "$py" -m cloud_service pki init "$1" --host mosquitto >/dev/null
  PYTHONPATH="$repo" "$py" -m cloud_service pki gateway "$2" "$1" >/dev/null
  # The cloud and edge images run as uid 10001; the broker's start.sh copies its own key.
  chown 10001 "$1/cloud.key" "$1/gateways/$2.key"
}

wait_http() {  # wait_http url what: until it answers 200, at most $wait_s seconds
  local url=$1 what=$2 t0=$EPOCHREALTIME
  "$py" - "$url" "$wait_s" <<'PY' || { echo "timed out waiting for $what ($url)" >&2; return 1; }
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(1)
PY
  echo "$what after $(elapsed "$t0") s"
}

# ---- 1. podman and the base images ----------------------------------------------------------
prepare() {
  # shellcheck source=podman-base.sh
  . "$here/podman-base.sh"
  # Builds run pip against PyPI: give RUN steps the host's CA bundle (this host reaches PyPI
  # through a TLS-inspecting proxy whose CA only the host trusts) and a pip.conf naming it.
  # Build-time volumes: nothing of either lands in the images.
  build_opts=(--network host --format docker)
  # shellcheck disable=SC2206  # a list of options
  build_opts+=($PDM_PODMAN_ULIMITS)
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$cache/pip.conf"
    build_opts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
                 -v "$cache/pip.conf:/etc/pip.conf:ro")
  fi
}

build() {  # build Dockerfile tag
  local file=$1 tag=$2 blog="$cache/last-build-${2%%:*}.log" before after
  before=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  if ! podman build "${build_opts[@]}" --ignorefile "$here/$file.dockerignore" \
       -f "$here/$file" -t "$tag" "$repo" >"$blog" 2>&1; then
    tail -n 60 "$blog" >&2
    return 1
  fi
  echo "$(grep -c '^--> Using cache' "$blog") of $(grep -c 'STEP [0-9]*/' "$blog") build" \
    "steps from the layer cache (log: $blog)"
  after=$(podman image inspect --format '{{.Id}}' "$tag")
  # Only the image this tag named before, if nothing else uses it. (Not `podman image prune`:
  # it would delete the build stage's layers, the cache of the next build.)
  if [ -n "$before" ] && [ "$before" != "$after" ]; then
    podman rmi "$before" >/dev/null 2>&1 || true
  fi
}

# ---- 3. the image test ----------------------------------------------------------------------
image_start() {
  mqtt_port=$(free_port); api_port=$(free_port)
  token="$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')"
  mkdir -p "$work/broker"
  make_pki "$work/pki" gw-imagetest
  # The shipped config as it is, on a free loopback port (host network).
  sed "s/^listener .*/listener $mqtt_port 127.0.0.1/" "$here/mosquitto/mosquitto.conf" \
    > "$work/broker/mosquitto.conf"
  local f
  containers+=("$run_id-broker")
  # shellcheck disable=SC2046  # word-split on purpose: a list of -v options
  podman run -d --name "$run_id-broker" --network host \
    --entrypoint /bin/sh \
    -v "$work/broker/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" \
    -v "$here/mosquitto/acl:/mosquitto/config/acl:ro" \
    -v "$here/mosquitto/start.sh:/mosquitto/config/start.sh:ro" \
    $(for f in ca.crt crl.pem broker.crt broker.key; do
        printf -- '-v %s:/run/pki/%s:ro ' "$work/pki/$f" "$f"; done) \
    eclipse-mosquitto:2 /mosquitto/config/start.sh >/dev/null
  containers+=("$run_id-cloud")
  # Without systemd podman cannot run the HEALTHCHECK on a timer (it logs an error and goes
  # on); image_ready runs it with `podman healthcheck run`.
  # shellcheck disable=SC2046  # word-split on purpose: a list of -v options
  podman run -d --name "$run_id-cloud" --network host \
    -e PDM_CLOUD_API_TOKEN="$token" \
    -e PDM_CLOUD_BROKER__HOST=127.0.0.1 -e PDM_CLOUD_BROKER__PORT="$mqtt_port" \
    -e PDM_CLOUD_HTTP__HOST=127.0.0.1 -e PDM_CLOUD_HTTP__PORT="$api_port" \
    -e PDM_CLOUD_CLIENT_ID="$run_id-cloud" \
    $(for f in ca.crt cloud.crt cloud.key; do
        printf -- '-v %s:/etc/pdm/mqtt/%s:ro ' "$work/pki/$f" "$f"; done) \
    pdm-cloud:latest 2> >(grep -v 'systemd connection' >&2) >/dev/null
  echo "broker on 127.0.0.1:$mqtt_port, cloud API on 127.0.0.1:$api_port"
}

image_ready() {
  wait_http "http://127.0.0.1:$api_port/healthz" "/healthz"
  wait_http "http://127.0.0.1:$api_port/readyz" "/readyz"
  podman healthcheck run "$run_id-cloud"
  echo "HEALTHCHECK: $(podman inspect --format '{{.State.Health.Status}}' "$run_id-cloud")"
  local uid
  uid=$(podman exec "$run_id-cloud" id -u)
  [ "$uid" != 0 ] || { echo "the cloud container runs as root" >&2; return 1; }
  echo "runs as uid $uid"
}

image_uplink() {
  PYTHONPATH="$repo" "$py" - "$repo" "$mqtt_port" "$api_port" "$token" "$work/pki" <<'PY'
"""Publish one uplink batch of real C-MAPSS rows through the broker (as gateway gw-imagetest,
with its certificate), read it back."""
import json, sys, time, uuid
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt

from contract import codec, topics
from contract.cmapss import COLUMNS, read_cmapss
from contract.payloads import UplinkBatch

repo, mqtt_port, api_port, token = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
pki = Path(sys.argv[5])
manifest = json.loads((repo / "models/default/manifest.json").read_text())
features, window = tuple(manifest["features"]), manifest["window"]
rows = read_cmapss(repo / "data/cmapss/test_FD001.txt")
units, counts = np.unique(rows[:, 0], return_counts=True)
unit = rows[rows[:, 0] == units[np.argmax(counts)]]  # the longest engine run
n = min(len(unit), 2 * window)
values = unit[:n, [COLUMNS.index(f) for f in features]].astype(np.float32)
prob = np.full(n, 0.1, np.float32)
prob[: window - 1] = np.nan
gw, asset = "gw-imagetest", "engine-1"
batch = UplinkBatch(gateway=gw, asset=asset, first_seq=0,
                    timestamps=time.time() - n + np.arange(n, dtype=np.float64),
                    features=features, values=values, probability=prob,
                    rul=np.where(np.isnan(prob), np.nan, 100.0), model_version="container-test")

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                     protocol=mqtt.MQTTv5)
# As root here, the gateway's key (chowned to the image's uid) is still readable.
client.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / "gateways" / f"{gw}.crt"),
               keyfile=str(pki / "gateways" / f"{gw}.key"))
client.connect("127.0.0.1", mqtt_port)
client.loop_start()
info = client.publish(topics.uplink(gw), codec.encode_uplink(batch), qos=1)
info.wait_for_publish(10)
assert info.is_published(), "the broker did not acknowledge the uplink batch"
client.loop_stop()
client.disconnect()
print(f"published {n} ticks of {gw}/{asset} ({len(features)} features) to {topics.uplink(gw)}")

http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}",
                    headers={"Authorization": f"Bearer {token}"}, timeout=10)
deadline = time.monotonic() + 60
ticks = preds = []
while time.monotonic() < deadline:
    ticks = http.get(f"/api/v1/assets/{gw}/{asset}/ticks", params={"limit": 200}).json()
    ticks = ticks.get("items", []) if isinstance(ticks, dict) else []
    preds = http.get(f"/api/v1/assets/{gw}/{asset}/predictions",
                     params={"limit": 200}).json()
    preds = preds.get("items", []) if isinstance(preds, dict) else []
    if len(ticks) == n and len(preds) == n - window + 1:
        break
    time.sleep(0.25)
assert [t["seq"] for t in ticks] == list(range(n)), f"ticks read back: {len(ticks)} of {n}"
assert set(ticks[0]["values"]) == set(features)
assert abs(ticks[5]["values"][features[0]] - float(values[5, 0])) < 1e-3
assert [p["seq"] for p in preds] == list(range(window - 1, n)), f"predictions: {len(preds)}"
assert all(0 <= p["probability"] <= 1 for p in preds)
print(f"read back {len(ticks)} ticks and {len(preds)} cloud predictions "
      f"(model {preds[-1]['model_version']}, last p={preds[-1]['probability']:.3f}, "
      f"rul={preds[-1]['rul']:.0f})")
PY
}

image_stop() {
  podman rm -f -v -t 10 "${containers[@]}" 2> >(grep -v 'systemd connection' >&2) >/dev/null
  containers=()
}

# ---- 4. the compose test --------------------------------------------------------------------
compose_tool() {
  compose_bin=$(command -v podman-compose || true)
  [ -n "$compose_bin" ] || [ ! -x "$repo/.venv/bin/podman-compose" ] \
    || compose_bin="$repo/.venv/bin/podman-compose"
  if [ -z "$compose_bin" ]; then
    [ -x "$cache/tools/bin/podman-compose" ] || {
      "$py" -m venv "$cache/tools"
      "$cache/tools/bin/pip" install -q --disable-pip-version-check podman-compose
    }
    compose_bin="$cache/tools/bin/podman-compose"
  fi
  echo "$("$compose_bin" --version 2>/dev/null | tr '\n' ' ')"
}
compose() {
  "$compose_bin" -f "$here/compose.yaml" -f "$here/compose.test.yaml" -p "$run_id" "$@"
}
cloud_replicas=2

compose_start() {
  export PDM_CLOUD_API_TOKEN PDM_DB_PASSWORD PDM_MQTT_PORT PDM_EDGE_METRICS_PORT PDM_PKI_DIR
  PDM_PKI_DIR="$work/compose-pki"
  make_pki "$PDM_PKI_DIR" gw-demo
  PDM_CLOUD_API_TOKEN="$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')"
  PDM_DB_PASSWORD="$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')"
  PDM_MQTT_PORT=$(free_port); PDM_EDGE_METRICS_PORT=$(free_port)
  compose_up=1
  # The images are the ones just built (pdm-cloud, pdm-edge, pdm-postgres-test): no build here.
  # podman < 4.6 cannot wait for `service_healthy`: PostgreSQL first, until it accepts logins,
  # so the replicas' first connection finds it (they also retry on their own).
  compose up -d postgres >"$work/compose-up.log" 2>&1 \
    || { cat "$work/compose-up.log" >&2; return 1; }
  local pg t0=$EPOCHREALTIME
  pg=$(podman ps -q --filter "label=io.podman.compose.project=$run_id" \
       --filter "label=io.podman.compose.service=postgres")
  until podman exec "$pg" pg_isready -q -U pdm -d pdm -h 127.0.0.1; do
    [ "$(elapsed "$t0" | cut -d. -f1)" -lt "$wait_s" ] \
      || { echo "PostgreSQL not ready after $wait_s s" >&2; return 1; }
    sleep 1
  done
  echo "PostgreSQL accepts connections after $(elapsed "$t0") s"
  compose up -d --scale cloud=$cloud_replicas >>"$work/compose-up.log" 2>&1 \
    || { cat "$work/compose-up.log" >&2; return 1; }
  podman ps --filter "label=io.podman.compose.project=$run_id" \
    --format '  {{.Names}}  {{.Image}}  {{.Status}}  {{.Ports}}'
  mapfile -t cloud_containers < <(podman ps -q \
    --filter "label=io.podman.compose.project=$run_id" \
    --filter "label=io.podman.compose.service=cloud")
  local c
  api_ports=()
  for c in "${cloud_containers[@]}"; do
    api_ports+=("$(podman port "$c" 8000/tcp | head -n 1 | sed 's/.*://')")
  done
  [ "${#api_ports[@]}" = "$cloud_replicas" ] \
    || { echo "expected $cloud_replicas cloud replicas, found ${#api_ports[@]}" >&2; return 1; }
  echo "broker on :$PDM_MQTT_PORT, cloud APIs on :${api_ports[*]}," \
    "edge metrics on :$PDM_EDGE_METRICS_PORT"
  local port
  for port in "${api_ports[@]}"; do
    wait_http "http://127.0.0.1:$port/readyz" "cloud replica :$port /readyz"
  done
  wait_http "http://127.0.0.1:$PDM_EDGE_METRICS_PORT/metrics" "edge /metrics"
}

compose_check() {
  # The client id each replica connected with, from its log (`connected to ... as ID`).
  local c ids=()
  for c in "${cloud_containers[@]}"; do
    ids+=("$(podman logs "$c" 2>&1 | grep -o 'connected to [^ ]* as [^ ]*' | head -n 1 \
             | sed 's/.* as //' || true)")
  done
  echo "cloud client ids: ${ids[*]}"
  [ "$(printf '%s\n' "${ids[@]}" | grep . | sort -u | wc -l)" = "$cloud_replicas" ] \
    || { echo "expected $cloud_replicas distinct cloud client ids" >&2; return 1; }
  PYTHONPATH="$repo" "$py" - "$PDM_MQTT_PORT" "$PDM_CLOUD_API_TOKEN" "$wait_s" \
    "$PDM_PKI_DIR" "${api_ports[@]}" <<'PY'
"""Edge alerts on the broker (alert events or retained states, read with the gateway's own
certificate: the ACL shows it nothing else); every replica ingests a share of the uplink and
serves the whole fleet (the same assets, with the ticks the other replicas stored) from the
shared store."""
import json, sys, threading, time

import httpx
import paho.mqtt.client as mqtt

mqtt_port, token, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
pki = sys.argv[4]
api_ports = sys.argv[5:]
seen: list[tuple[str, dict]] = []
got = threading.Event()

def on_message(client, userdata, msg):
    try:
        seen.append((msg.topic, json.loads(msg.payload)))
    except ValueError:
        return
    got.set()

def on_connect(client, userdata, flags, reason, props):
    client.subscribe([("pdm/v1/gw-demo/+/alert", 1), ("pdm/v1/gw-demo/+/state", 1)])

t0 = time.monotonic()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pdm-compose-test",
                     protocol=mqtt.MQTTv5)
client.tls_set(ca_certs=f"{pki}/ca.crt", certfile=f"{pki}/gateways/gw-demo.crt",
               keyfile=f"{pki}/gateways/gw-demo.key")
client.on_message, client.on_connect = on_message, on_connect
client.connect("127.0.0.1", mqtt_port)
client.loop_start()
if not got.wait(limit):
    sys.exit(f"no edge alert or state on MQTT within {limit:.0f} s")
time.sleep(1)
client.loop_stop()
client.disconnect()
topic, event = seen[0]
print(f"{len(seen)} alert/state message(s) on MQTT after {time.monotonic() - t0:.1f} s; first: "
      f"{topic} {event.get('old_state', '')}->{event.get('new_state', event.get('state', ''))} "
      f"p={event.get('probability', float('nan')):.3f}")

apis = [httpx.Client(base_url=f"http://127.0.0.1:{port}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
        for port in api_ports]


def received(api: httpx.Client) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in api.get("/metrics").text.splitlines()
               if line.startswith("pdm_cloud_ticks_received_total "))


def fleet(api: httpx.Client) -> dict[tuple[str, str], int]:
    return {(a["gateway"], a["asset"]): a["ticks"] for a in api.get("/api/v1/assets").json()
            if a.get("ticks")}


deadline = time.monotonic() + limit
while True:
    shares = [received(api) for api in apis]
    views = [fleet(api) for api in apis]
    # Read in turn, the later replica may only have seen more ticks, never fewer assets.
    same = all(views) and all(set(v) == set(views[0]) for v in views)
    if all(shares) and same:
        break
    if time.monotonic() > deadline:
        sys.exit(f"after {limit:.0f} s: ticks received per replica {shares}; assets with "
                 f"ticks per replica {[len(v) for v in views]} (each replica must ingest a "
                 "share and list the whole fleet)")
    time.sleep(1)
asset = max(views[0], key=views[0].get)
rows = [api.get(f"/api/v1/assets/{asset[0]}/{asset[1]}/ticks", params={"limit": 500}).json()
        for api in apis]
seqs = [[t["seq"] for t in r["items"]] for r in rows]
first = min(len(s) for s in seqs)
assert first and all(s[:first] == seqs[0][:first] for s in seqs), "replicas differ in ticks"
print(f"{len(apis)} replicas: ticks received {', '.join(f'{s:.0f}' for s in shares)}; each "
      f"lists the same {len(views[0])} asset(s); {asset[0]}/{asset[1]}: the same first "
      f"{first} ticks from every replica")
PY
}

compose_rm_replicas() {  # compose_rm_replicas timeout: the cloud replicas, whatever their count
  # podman-compose's `down` knows one container per service, not those `up --scale` added (and
  # cannot remove the broker and PostgreSQL while a replica that depends on them is left).
  local ids
  ids=$(podman ps -aq --filter "label=io.podman.compose.project=$run_id" \
        --filter "label=io.podman.compose.service=cloud")
  # shellcheck disable=SC2086  # a list of ids
  [ -z "$ids" ] || podman rm -f -v -t "$1" $ids >/dev/null 2>&1 || true
}

compose_down() {  # compose_down timeout: every container, network and volume of the project
  # `down -v` removes the named volumes, not the anonymous ones of the images' VOLUMEs
  # (mosquitto's /mosquitto/log): note them all first, remove what is left after.
  local ids vols rc=0
  ids=$(podman ps -aq --filter "label=io.podman.compose.project=$run_id")
  # shellcheck disable=SC2086  # a list of ids
  vols=$([ -z "$ids" ] || podman inspect --format \
         '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' $ids)
  compose_rm_replicas "$1"
  compose down -v -t "$1" || rc=$?
  # shellcheck disable=SC2086  # a list of names
  [ -z "${vols// /}" ] || podman volume rm -f $vols >/dev/null 2>&1 || true
  return "$rc"
}

compose_stop() {
  compose_down 10 >"$work/compose-down.log" 2>&1 || { cat "$work/compose-down.log" >&2; return 1; }
  compose_up=""
  local left
  left=$(podman ps -a --filter "label=io.podman.compose.project=$run_id" -q | wc -l)
  [ "$left" = 0 ] || { echo "$left container(s) left after down" >&2; return 1; }
  left=$(podman volume ls -q --filter "label=io.podman.compose.project=$run_id" | wc -l)
  [ "$left" = 0 ] || { echo "$left volume(s) left after down" >&2; return 1; }
}

step "podman + base images (podman-base.sh)" prepare
step "build cloud image" build Dockerfile pdm-cloud:latest
step "build edge image" build Dockerfile.edge pdm-edge:latest
step "image test: start broker + cloud" image_start
step "image test: /healthz, /readyz, HEALTHCHECK" image_ready
step "image test: uplink batch through MQTT -> API" image_uplink
step "image test: stop and remove" image_stop
if [ "${PDM_TEST_SKIP_COMPOSE:-0}" != 1 ]; then
  step "build test PostgreSQL image" build Dockerfile.postgres-test pdm-postgres-test:latest
  step "compose: podman-compose available" compose_tool
  step "compose: up (broker, PostgreSQL, 2 clouds, edge) until ready" compose_start
  step "compose: 2 replicas, one fleet, alerts on MQTT" compose_check
  step "compose: down -v" compose_stop
fi
