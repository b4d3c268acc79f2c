#!/usr/bin/env bash
# Installs what the end-to-end tests drive, when it is missing: the real
# OpenSSH client and server, nc, rsync, curl, ip/iptables for the NAT lab,
# mosquitto for the external-broker tests, and patch, with which lint checks
# the x/crypto copy in third_party. Needs root on Debian/Ubuntu.
set -euo pipefail

need=()
command -v ssh     >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ]          || need+=(openssh-server)
command -v nc      >/dev/null || need+=(netcat-openbsd)
command -v rsync   >/dev/null || need+=(rsync)
command -v curl    >/dev/null || need+=(curl)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v ip      >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v patch   >/dev/null || need+=(patch)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
  exit 1
fi
echo "test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages start a system sshd on :22 and a mosquitto on :1883; the tests
# run their own.
systemctl disable --now ssh >/dev/null 2>&1 || true
systemctl disable --now mosquitto >/dev/null 2>&1 || true
