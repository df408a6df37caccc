#!/usr/bin/env bash
# Installs the peers the tests and benchmarks compare larder with, on a
# Debian 12 machine, as root: Nix 2.8 from Debian (`nix-bin`) configured for
# single-user use with a local store and no daemon, a static busybox for
# `/bin/sh` inside sandboxes, util-linux's flock(1) and openssl.
#
# Idempotent. Without root it only says what is missing: the tests that need
# a peer skip with a message saying so.
set -euo pipefail

missing=()
command -v nix-store >/dev/null 2>&1 || missing+=(nix-bin)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-peers: not root; missing: ${missing[*]} (their tests will be skipped)" >&2
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$(id -u)" -eq 0 ] && ! grep -q 'larder peer' /etc/nix/nix.conf 2>/dev/null; then
    mkdir -p /etc/nix
    [ -f /etc/nix/nix.conf ] && cp /etc/nix/nix.conf /etc/nix/nix.conf.before-larder
    # Root builds as root without build users; no binary caches (no network);
    # the sandbox is chosen per call and gets busybox as /bin/sh, since the
    # test derivations use /bin/sh as their builder.
    cat > /etc/nix/nix.conf <<'CONF'
# larder peer: single-user Nix 2.8 for larder's tests and benchmarks
experimental-features = nix-command
substituters =
require-sigs = false
build-users-group =
sandbox = false
sandbox-fallback = false
sandbox-paths = /bin/sh=/bin/busybox
keep-derivations = true
max-jobs = 2
cores = 1
CONF
fi
if command -v nix-store >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    nix-store --init
    echo "install-peers: $(nix --version)"
fi
