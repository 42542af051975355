#!/usr/bin/env bash
# Installs what building and testing ngx-wsgi needs on Debian 12 (run as root, or with sudo).
set -euo pipefail
pkgs=(nginx nginx-dev libclang-dev libpcre2-dev libssl-dev zlib1g-dev python3-dev python3-venv
      python3-pip wrk curl pkg-config make gcc openssl
      debhelper dpkg-dev fakeroot debootstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged nginx starts a service on port 80 when installed; the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
