#!/usr/bin/env bash
# Installs what the end-to-end tests drive, when it is missing: the real
# OpenSSH client and server, nc, rsync, curl, and ip/iptables for the NAT
# lab. Needs root on Debian/Ubuntu.
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
# The package starts a system sshd on :22; the tests run their own.
systemctl disable --now ssh >/dev/null 2>&1 || true
