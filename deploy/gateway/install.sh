#!/usr/bin/env bash
# Install the edge agent on a gateway (Raspberry Pi OS / Jetson / Debian / Ubuntu):
#   venv in /opt/pdm-agent/venv, config in /etc/pdm-agent, state in /var/lib/pdm-agent,
#   systemd unit edge-agent.service running as the dedicated user pdm-agent.
#
#   sudo deploy/gateway/install.sh                 # install and start
#   deploy/gateway/install.sh --prefix /tmp/root   # dry run into a folder: no users, no systemd
set -euo pipefail

prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

src="$(cd "$(dirname "$0")/../.." && pwd)"
opt="$prefix/opt/pdm-agent"
etc="$prefix/etc/pdm-agent"
state="$prefix/var/lib/pdm-agent"
unit_dir="$prefix/etc/systemd/system"
python="${PYTHON:-python3}"

if [ -z "$prefix" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (or use --prefix DIR for a dry run)" >&2
  exit 1
fi

echo "installing the edge agent from $src"
mkdir -p "$opt" "$etc" "$state" "$unit_dir"
if [ ! -x "$opt/venv/bin/python" ]; then
  "$python" -m venv "$opt/venv"
fi
"$opt/venv/bin/python" -m pip install --quiet --upgrade pip
"$opt/venv/bin/python" -m pip install --quiet "$src[edge]"

mkdir -p "$opt/models"
rm -rf "$opt/models/default"
cp -r "$src/models/default" "$opt/models/default"
cp "$src/models/default_signing_key.pub" "$opt/models/"
if [ ! -f "$etc/agent.yaml" ]; then
  sed -e "s#path: models/default#path: /opt/pdm-agent/models/default#" \
      -e "s#models/default_signing_key.pub#/opt/pdm-agent/models/default_signing_key.pub#" \
      -e "s#path: var/outbox.db#path: /var/lib/pdm-agent/outbox.db#" \
      -e "s#file: data/cmapss/test_FD001.txt#file: /opt/pdm-agent/data/test_FD001.txt#" \
      "$src/deploy/gateway/agent.example.yaml" > "$etc/agent.yaml"
  mkdir -p "$opt/data" && cp "$src/data/cmapss/test_FD001.txt" "$opt/data/"
  echo "wrote $etc/agent.yaml: edit gateway_id, brokers and sources"
fi
sed "s#@PREFIX@#$prefix#g" "$src/deploy/gateway/edge-agent.service" > "$unit_dir/edge-agent.service"

"$opt/venv/bin/python" -m edge_agent check-config "$etc/agent.yaml" >/dev/null

if [ -n "$prefix" ]; then
  echo "dry run into $prefix done (no user created, systemd untouched)"
  exit 0
fi
id pdm-agent >/dev/null 2>&1 || useradd --system --home /var/lib/pdm-agent --shell /usr/sbin/nologin pdm-agent
chown -R pdm-agent:pdm-agent "$state"
chmod 0750 "$etc"; chgrp pdm-agent "$etc" "$etc/agent.yaml"; chmod 0640 "$etc/agent.yaml"
systemctl daemon-reload
systemctl enable --now edge-agent.service
echo "edge-agent.service is running: journalctl -u edge-agent -f"
