#!/usr/bin/env bash
# The base of every image of the deploy test (no image registry is reachable):
# Debian bookworm by debootstrap, with python3 (+venv, pip, `python`) like
# python:3.11-slim-bookworm, and what a container needs to reach the package
# registries the way this machine does.
#
#   build-base.sh ROOTFS_DIR TAG      (root; ROOTFS_DIR is scratch, removed)
set -euo pipefail
root="$1" tag="$2"
rm -rf "$root"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian
# TLS: package downloads may go through a proxy that re-signs them, so the
# host's CA bundle, also where update-ca-certificates would rebuild it from;
# pip is pointed at it (apt's sources are plain http, signed by Debian's keys).
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
    "$root/usr/local/share/ca-certificates/host-ca-bundle.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
# apt: the host's sources (mirror, suites incl. updates and security) and any
# proxy or validity setting of the host's; not its choices about docs or cache.
if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/"
fi
for f in /etc/apt/apt.conf.d/*; do
    if grep -qiE 'proxy|Check-Valid-Until' "$f" 2>/dev/null; then
        cp "$f" "$root/etc/apt/apt.conf.d/"
    fi
done
# No daemon starts while a package installs.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/*
tar --numeric-owner -C "$root" -c . |
    podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$tag"
rm -rf "$root"
