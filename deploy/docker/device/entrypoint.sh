#!/bin/sh
# Entrypoint of the switchboard device images (Dockerfile.ubuntu, .fedora, .arch): the
# container plays one device behind NAT. It
#   1. checks the agent's config (the directory `switchboard enroll --role device` wrote),
#   2. creates this device's sshd host key if there is none yet,
#   3. writes a minimal, key-only sshd_config and starts sshd in the background, listening
#      on 127.0.0.1 only: operators reach it through the switchboard, never directly,
#   4. replaces itself (exec) with `switchboard agent`, so that SIGTERM (`docker stop`)
#      reaches the agent, which exits 0, and the agent's exit code is the container's.
# Arguments are passed on to the agent (e.g. --log-level debug). sshd stays a child in this
# process's group: when the agent exits, Docker ends the container and sshd with it; outside
# Docker, kill the process group. Run it with an init (compose `init: true`, `docker run
# --init`) so that zombies are reaped.
#
# Every path is an environment variable, so the script runs outside Docker too (the test in
# this directory runs it unprivileged-style in a temporary directory):
#   SWITCHBOARD           the switchboard binary        /usr/local/bin/switchboard
#   SWITCHBOARD_ETC       the enrolment directory       /etc/switchboard
#   SWITCHBOARD_CONFIG    the agent's config file       $SWITCHBOARD_ETC/agent.yaml
#   SSHD                  sshd (absolute path)          /usr/sbin/sshd
#   SSH_KEYGEN            ssh-keygen                    ssh-keygen (on PATH)
#   SSHD_HOST_KEY_DIR     where the host key is kept    /etc/ssh
#   SSHD_RUN_DIR          generated sshd_config, pid    /run/switchboard-device
#   SSHD_AUTHORIZED_KEYS  operators' public keys        $SWITCHBOARD_ETC/authorized_keys
#   SSHD_PRIVSEP_DIR      created when run as root      /run/sshd (Debian's; "" for none)
#   SSHD_PORT, SSHD_LISTEN  sshd's address              22, 127.0.0.1 (agent.yaml's forward
#                                                       must point at it: default 22:127.0.0.1:22)
#   SSHD_STRICT_MODES     sshd's StrictModes            yes
set -eu

SWITCHBOARD=${SWITCHBOARD:-/usr/local/bin/switchboard}
SWITCHBOARD_ETC=${SWITCHBOARD_ETC:-/etc/switchboard}
SWITCHBOARD_CONFIG=${SWITCHBOARD_CONFIG:-$SWITCHBOARD_ETC/agent.yaml}
SSHD=${SSHD:-/usr/sbin/sshd}
SSH_KEYGEN=${SSH_KEYGEN:-ssh-keygen}
SSHD_HOST_KEY_DIR=${SSHD_HOST_KEY_DIR:-/etc/ssh}
SSHD_RUN_DIR=${SSHD_RUN_DIR:-/run/switchboard-device}
SSHD_AUTHORIZED_KEYS=${SSHD_AUTHORIZED_KEYS:-$SWITCHBOARD_ETC/authorized_keys}
SSHD_PRIVSEP_DIR=${SSHD_PRIVSEP_DIR-/run/sshd}
SSHD_PORT=${SSHD_PORT:-22}
SSHD_LISTEN=${SSHD_LISTEN:-127.0.0.1}
SSHD_STRICT_MODES=${SSHD_STRICT_MODES:-yes}

me=switchboard-device
say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { say "$*"; exit 1; }

# program PATH-OR-NAME prints the absolute path of an executable file, or fails.
program() {
	case $1 in
	*/*) p=$1 ;;
	*) p=$(command -v -- "$1" 2>/dev/null) || return 1 ;;
	esac
	[ -f "$p" ] && [ -x "$p" ] || return 1
	case $p in
	/*) printf '%s\n' "$p" ;;
	*) printf '%s/%s\n' "$PWD" "$p" ;;
	esac
}

# 1. Nothing is started unless the agent can start too.
if [ ! -e "$SWITCHBOARD_CONFIG" ]; then
	die "no agent config at $SWITCHBOARD_CONFIG: mount the directory that 'switchboard enroll NAME --role device' wrote at $SWITCHBOARD_ETC, or set SWITCHBOARD_CONFIG"
fi
[ -r "$SWITCHBOARD_CONFIG" ] || die "cannot read the agent config $SWITCHBOARD_CONFIG (running as uid $(id -u))"
sb=$(program "$SWITCHBOARD") || die "no switchboard binary at $SWITCHBOARD (set SWITCHBOARD)"
sshd=$(program "$SSHD") || die "no sshd at $SSHD (install openssh-server, or set SSHD)"
keygen=$(program "$SSH_KEYGEN") || die "no ssh-keygen at $SSH_KEYGEN (install openssh, or set SSH_KEYGEN)"

# 2. This device's own host key: what operators pin, under the device's name, the first
# time they reach it. Keep SSHD_HOST_KEY_DIR on a volume so that it survives re-creation.
mkdir -p "$SSHD_HOST_KEY_DIR" "$SSHD_RUN_DIR"
key=$SSHD_HOST_KEY_DIR/ssh_host_ed25519_key
if [ ! -s "$key" ]; then
	rm -f "$key" "$key.pub"
	"$keygen" -q -t ed25519 -N '' -f "$key" </dev/null
	say "created sshd host key $key"
elif [ ! -s "$key.pub" ]; then
	"$keygen" -y -f "$key" >"$key.pub"
fi
if [ -n "$SSHD_PRIVSEP_DIR" ] && [ "$(id -u)" = 0 ] && [ ! -d "$SSHD_PRIVSEP_DIR" ]; then
	mkdir -p "$SSHD_PRIVSEP_DIR"
	chmod 0755 "$SSHD_PRIVSEP_DIR"
fi
[ -r "$SSHD_AUTHORIZED_KEYS" ] || say "warning: no $SSHD_AUTHORIZED_KEYS: nobody can log in to this device's sshd"

# 3. Key-only sshd. UsePAM no: containers have no login session machinery (pam_loginuid
# fails there); the images give root the password field "*" (no password, not locked).
config=$SSHD_RUN_DIR/sshd_config
cat >"$config" <<EOF
# Written by $0 at each start; edit the environment, not this file.
Port $SSHD_PORT
ListenAddress $SSHD_LISTEN
HostKey "$key"
PidFile "$SSHD_RUN_DIR/sshd.pid"
AuthorizedKeysFile "$SSHD_AUTHORIZED_KEYS"
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes $SSHD_STRICT_MODES
X11Forwarding no
Subsystem sftp internal-sftp
EOF
"$sshd" -t -f "$config" || die "sshd rejected $config (its message is above)"
"$sshd" -D -e -f "$config" &
say "sshd (pid $!) on $SSHD_LISTEN:$SSHD_PORT, host key $("$keygen" -l -f "$key.pub" | cut -d' ' -f2)"

# 4. The agent takes this process over: signals reach it directly.
exec "$sb" agent --config "$SWITCHBOARD_CONFIG" "$@"
