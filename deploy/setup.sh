#!/bin/sh
# Installs the Debian packages sealpost needs to build, run and test, when they
# are missing. Idempotent. As root it runs apt-get; otherwise it prints the
# exact command and stops.
set -eu

packages="cmake make gcc clang pkg-config libuv1-dev libhiredis-dev libinih-dev
libsodium-dev libssl-dev libgpgme-dev librnp-dev gpg gpg-agent gpgconf gpg-wks-client sq rnp libc-ares-dev libcmocka-dev libclang-rt-14-dev
redis-server dnsmasq-base swaks prometheus chromium libnet-ssleay-perl libauthen-sasl-perl openssl haproxy postfix
python3 python3-pytest python3-redis python3-aiosmtpd python3-prometheus-client python3-gnupg python3-nacl clang-tidy cppcheck
sq rnp
clang-format
python3-dkim opendkim-tools iproute2
podman podman-compose runc netavark aardvark-dns catatonit iptables debootstrap docker-compose python3-jsonschema"

missing=""
for p in $packages; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "sealpost: missing packages. Run as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi

echo "sealpost: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# Postfix is here for its test tools (smtp-source, smtp-sink): "No
# configuration" keeps it from setting itself up as this machine's MTA on
# port 25.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
# podman and podman-compose (rootful) run the compose cluster of
# tests/cluster; netavark needs iptables, and debootstrap makes the
# debian:bookworm-slim base image locally. docker-compose (v1) only validates
# deploy/docker-compose.yml.
# redis-server's package may start a system Redis on 6379; sealpost never uses
# that one (`sealpost up` runs its own on 6380, tests on free ports).
apt-get install -y -qq --no-install-recommends $missing
