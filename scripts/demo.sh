#!/usr/bin/env bash
# The switchboard demo, on loopback: a server, a device that connects out with
# stock `ssh -R` in front of its own sshd, and an operator who reaches it by
# name with stock `ssh -J` and `scp -J`. Everything runs in a temp dir and is
# cleaned up on exit, also on Ctrl-C. Exits non-zero if any step fails.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
sb=${SWITCHBOARD:-$here/bin/switchboard}
[ -x "$sb" ] || { echo "demo: $sb not built; run 'make demo'" >&2; exit 1; }
"$here/scripts/test-deps.sh"

work=$(mktemp -d /tmp/switchboard-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step=0
say() { step=$((step + 1)); printf '\n\033[1m[%d] %s\033[0m\n' "$step" "$*"; }
show() { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; return "${PIPESTATUS[0]}"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)); }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local until=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || { echo "demo: timed out waiting for $what" >&2; exit 1; }
    sleep 0.1
  done
}

cd "$work"
mkdir state device operator
pivot_port=$(free_port)
sshd_port=$(free_port)

say "Keys: one for the device, one for the operator (plain ssh-keygen)"
ssh-keygen -q -t ed25519 -N '' -C device -f device/id_ed25519
ssh-keygen -q -t ed25519 -N '' -C operator -f operator/id_ed25519
cat > state/authorized_keys <<EOF
# The device may listen (register virtual ports) under the name dev42.
access="listen",hostname="dev42" $(cat device/id_ed25519.pub)
# The operator may initiate circuits to any device.
access="initiate" $(cat operator/id_ed25519.pub)
EOF
sed 's/^/    /' state/authorized_keys

say "Start the server (the public pivot) on 127.0.0.1:$pivot_port"
"$sb" serve --listen "127.0.0.1:$pivot_port" --state-dir state --mqtt-listen 127.0.0.1:0 2> server.log &
pids+=($!)
wait_for 10 "the server's host key" test -s state/ssh_host_ed25519_key.pub
wait_for 10 "the server to listen" grep -q '"msg":"listening","component":"sshd"' server.log
echo "    listening; host key $(ssh-keygen -lf state/ssh_host_ed25519_key.pub | cut -d' ' -f2)"

say "The device's own sshd (what operators will reach) on 127.0.0.1:$sshd_port"
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f device/ssh_host_ed25519_key
cp operator/id_ed25519.pub device/authorized_keys
cat > device/sshd_config <<EOF
Port $sshd_port
ListenAddress 127.0.0.1
HostKey $work/device/ssh_host_ed25519_key
AuthorizedKeysFile $work/device/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -D -e -f device/sshd_config 2> device/sshd.log &
pids+=($!)

# Operators pin both host keys: the server's, and the device's under its name.
echo "[127.0.0.1]:$pivot_port $(cat state/ssh_host_ed25519_key.pub)" > operator/known_hosts
echo "dev42 $(cat device/ssh_host_ed25519_key.pub)" >> operator/known_hosts
cp operator/known_hosts device/known_hosts
common="-o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes"

say "The device connects OUT to the server and asks for a virtual port 22 (stock ssh -R)"
echo "  \$ ssh -N -R 22:localhost:$sshd_port dev42@127.0.0.1 -p $pivot_port"
ssh -F /dev/null $common -i device/id_ed25519 -o UserKnownHostsFile=device/known_hosts \
  -o ExitOnForwardFailure=yes -o ServerAliveInterval=15 \
  -N -R "22:localhost:$sshd_port" -p "$pivot_port" dev42@127.0.0.1 2> device/ssh.log &
pids+=($!)
wait_for 10 "the device to register" grep -q '"msg":"device registered"' server.log
echo "    registered: no TCP port was opened on the server for it"

cat > operator/ssh_config <<EOF
Host pivot
  HostName 127.0.0.1
  Port $pivot_port
Host *
  User root
  IdentityFile $work/operator/id_ed25519
  UserKnownHostsFile $work/operator/known_hosts
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking yes
EOF
op() { ssh -F operator/ssh_config "$@"; }

say "The operator lists the devices (an SSH command on the server)"
show op pivot ls

say "The operator runs a command on the device, by name, through the server"
show op -J pivot dev42 'echo "hello from $(hostname) via switchboard"; uname -sr'

say "scp a 5 MiB file to the device and back, and compare checksums"
head -c 5M /dev/urandom > payload
show scp -q -F operator/ssh_config -J pivot payload dev42:"$work/device/payload.copy"
show scp -q -F operator/ssh_config -J pivot dev42:"$work/device/payload.copy" payload.back
a=$(sha256sum < payload | cut -c1-16) b=$(sha256sum < payload.back | cut -c1-16)
echo "    sent $a…  got back $b…"
[ "$a" = "$b" ] || { echo "demo: checksums differ" >&2; exit 1; }

say "Asking for a device that does not exist gives a clear sentence, not 'connection refused'"
if op -J pivot dev99 true 2> err.txt; then echo "demo: dev99 should not exist" >&2; exit 1; fi
grep -o 'switchboard: .*' err.txt | sed 's/^/    /'

say "What the server logged for the circuits (structured JSON)"
grep '"msg":"circuit"' server.log | tail -n 2 | sed 's/^/    /'

printf '\n\033[1mdemo: all %d steps passed\033[0m\n' "$step"
