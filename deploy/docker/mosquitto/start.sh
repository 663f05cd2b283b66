#!/bin/sh
# The broker container's entrypoint (compose and test-image.sh mount it). Mosquitto drops root
# for its own user before it reads its TLS files, and the key mounted from the host stays 0600
# for its owner there: copy the files it needs where that user, whatever its uid in this
# image, can read them. A new CRL (`pki revoke`) takes effect at the next start.
set -eu
install -d -m 0750 -o mosquitto -g mosquitto /mosquitto/certs
install -m 0444 /run/pki/ca.crt /run/pki/broker.crt /run/pki/crl.pem /mosquitto/certs/
install -m 0400 -o mosquitto -g mosquitto /run/pki/broker.key /mosquitto/certs/
exec /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
