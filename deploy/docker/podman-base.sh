#!/usr/bin/env bash
# Make the container tooling work on a Debian machine without a registry or a Docker engine:
# installs podman + runc + debootstrap when missing, writes a containers.conf (runc, ulimits
# within this machine's hard limits), and builds the base images our Dockerfiles and compose
# file name, from Debian's own packages:
#   localdebian:bookworm       (debootstrap --variant=minbase, with the host's apt sources)
#   python:3.11-slim-bookworm  (bookworm minbase + python3, python3-venv, pip)
#   eclipse-mosquitto:2        (bookworm minbase + Debian's mosquitto)
# Everything is cached under $PDM_PODMAN_CACHE (default /var/cache/pdm-podman): the rootfs and
# a `podman save` archive of each image, so a wiped podman storage is refilled without network.
# Idempotent. Source it (`. deploy/docker/podman-base.sh`) to get CONTAINERS_CONF and
# PDM_PODMAN_ULIMITS exported; run it to just prepare the machine.
set -euo pipefail

cache="${PDM_PODMAN_CACHE:-/var/cache/pdm-podman}"
mkdir -p "$cache/images"

if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
   || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # aardvark-dns: container names resolve on compose networks (netavark's DNS).
  apt-get install -y -qq podman runc debootstrap aardvark-dns >/dev/null
fi

nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
# runc refuses to set RLIMIT_NPROC near the hard limit on these hosts; 4096 is ample.
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; } && nproc=4096
cat > "$cache/containers.conf.new" <<CONF
# Written by deploy/docker/podman-base.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
# crun 1.8 refuses this host's hybrid cgroups.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$cache/containers.conf.new" "$cache/containers.conf"
export CONTAINERS_CONF="$cache/containers.conf"
# podman build does not apply default_ulimits to RUN steps (its own default, nproc=32768, is
# refused by runc here); pass them explicitly: podman build $PDM_PODMAN_ULIMITS ...
export PDM_PODMAN_ULIMITS="--ulimit nofile=${nofile}:${nofile} --ulimit nproc=${nproc}:${nproc}"

# Every base image carries the label pdm.base=<hash of its recipe>: an image or archive made
# by an older version of this script is rebuilt, one made by this version is reused.
rootfs_recipe="bookworm minbase v2: host apt sources, dpkg path-exclude docs/locales"
_pdm_hash() { sha256sum | cut -c1-16; }
_pdm_has() {  # tag hash: podman has it with this hash, or loads it from the cache archive
  local tag=$1 hash=$2 archive
  archive="$cache/images/$(echo "$tag" | tr ':/' '__').tar"
  [ "$(podman image inspect --format '{{index .Labels "pdm.base"}}' "$tag" 2>/dev/null)" \
    = "$hash" ] && return 0
  [ -s "$archive" ] && podman load -q -i "$archive" >/dev/null 2>&1 || return 1
  [ "$(podman image inspect --format '{{index .Labels "pdm.base"}}' "$tag" 2>/dev/null)" \
    = "$hash" ] && echo "podman-base: $tag loaded from $archive"
}
_pdm_save() {
  local archive
  archive="$cache/images/$(echo "$1" | tr ':/' '__').tar"
  podman save -q -o "$archive.tmp" "$1" && mv "$archive.tmp" "$archive"
}

# Build one image from a Dockerfile on stdin (FROM localdebian:bookworm) unless it is there.
# Output goes to a log, shown when the build fails.
_pdm_base_image() {
  local tag=$1 recipe hash log
  recipe="$(cat)"
  hash=$(printf '%s\n%s\n' "$rootfs_recipe" "$recipe" | _pdm_hash)
  _pdm_has "$tag" "$hash" && return 0
  echo "podman-base: building $tag"
  log="$cache/build-$(echo "$tag" | tr ':/' '__').log"
  # shellcheck disable=SC2086  # PDM_PODMAN_ULIMITS is a list of options
  if ! printf '%s\nLABEL pdm.base=%s\n' "$recipe" "$hash" \
       | podman build --network host $PDM_PODMAN_ULIMITS -t "$tag" -f - "$cache/context" \
         >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    return 1
  fi
  _pdm_save "$tag"
}
mkdir -p "$cache/context"

rootfs_hash=$(printf '%s\n' "$rootfs_recipe" | _pdm_hash)
if ! _pdm_has localdebian:bookworm "$rootfs_hash"; then
  # The mirror apt uses on this host (deb822 first, then the classic sources.list).
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources \
           2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' \
                               /etc/apt/sources.list 2>/dev/null || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  root="$cache/bookworm-rootfs"
  if [ "$(cat "$root/.pdm-base" 2>/dev/null)" != "$rootfs_hash" ]; then
    echo "podman-base: debootstrap --variant=minbase bookworm from $mirror"
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 40 "$cache/debootstrap.log" >&2; exit 1; }
    # Same apt sources as the host (updates and security too) when the host is bookworm.
    if grep -qs '^Suites:.*bookworm' /etc/apt/sources.list.d/debian.sources; then
      cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
      rm -f "$root/etc/apt/sources.list"
    fi
    # Slim like Docker's debian images: no docs, man pages or translations from later
    # packages, no apt caches left in layers.
    cat > "$root/etc/dpkg/dpkg.cfg.d/01-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
    cat > "$root/etc/apt/apt.conf.d/01-slim" <<'APT'
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };
APT
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/lintian/"*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
      -exec rm -rf {} +
    rm -rf "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
      "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
    echo "$rootfs_hash" > "$root/.pdm-base"
  fi
  tar -C "$root" --exclude=./.pdm-base -c . \
    | podman import -q -c 'CMD ["/bin/bash"]' -c "LABEL pdm.base=$rootfs_hash" - \
      localdebian:bookworm >/dev/null
  _pdm_save localdebian:bookworm
fi

# Like the official image: `python` and pip on the PATH, UTF-8, no compiler.
_pdm_base_image python:3.11-slim-bookworm <<'DOCKERFILE'
FROM localdebian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8 PIP_BREAK_SYSTEM_PACKAGES=1
CMD ["python3"]
DOCKERFILE

# Like the official image's layout (/mosquitto/{config,data,log}); Debian's 2.0.11 runs as
# root and drops to the mosquitto user, who owns data and log.
_pdm_base_image eclipse-mosquitto:2 <<'DOCKERFILE'
FROM localdebian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends mosquitto \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
 && printf 'listener 1883\nallow_anonymous true\n' > /mosquitto/config/mosquitto.conf \
 && chown -R mosquitto:mosquitto /mosquitto
VOLUME ["/mosquitto/data", "/mosquitto/log"]
EXPOSE 1883
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
DOCKERFILE

echo "podman ready: CONTAINERS_CONF=$CONTAINERS_CONF; base images:" \
  "$(podman images --format '{{.Repository}}:{{.Tag}}' | tr '\n' ' ')"
