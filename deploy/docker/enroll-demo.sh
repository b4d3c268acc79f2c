#!/bin/sh
# The demo's enrolment job: the "enroll" service of docker-compose.yml runs
#   enroll-demo.sh operator:alice device:dev1 on-demand:dev2
# with the server's state volume at STATE_DIR and one volume per name under OUT_DIR. For each
# argument ROLE:NAME it runs `switchboard enroll NAME` into OUT_DIR/NAME:
#   operator:NAME   key, known_hosts, and "config": an ssh_config for the operator's ~/.ssh
#   device:NAME     key, known_hosts, agent.yaml, and authorized_keys (the operators' public
#                   keys, for the device's own sshd: entrypoint.sh points sshd at it)
#   on-demand:NAME  the same, for an agent that waits for MQTT wake-ups
# The job runs at every `docker compose up`: a NAME whose directory already holds a key is
# kept as it is; devices' authorized_keys are rewritten from the operators given.
#
# Environment (defaults are the demo's paths inside the containers):
#   SWITCHBOARD       switchboard binary                      switchboard (on PATH)
#   STATE_DIR         the server's state directory            /var/lib/switchboard
#   OUT_DIR           where each NAME's directory is written  /enroll
#   DEVICE_DIR        where a device sees its directory       /etc/switchboard
#   OPERATOR_SSH_DIR  where the operator sees theirs          ~/.ssh (left for ssh to expand)
#   SERVER            HOST:PORT devices and operators dial    the server's --public-addr
#   WAIT              seconds to wait for the server's first start (its host key)   60
set -eu

SWITCHBOARD=${SWITCHBOARD:-switchboard}
STATE_DIR=${STATE_DIR:-/var/lib/switchboard}
OUT_DIR=${OUT_DIR:-/enroll}
DEVICE_DIR=${DEVICE_DIR:-/etc/switchboard}
# shellcheck disable=SC2088 # ssh expands the tilde, in the operator's container
OPERATOR_SSH_DIR=${OPERATOR_SSH_DIR:-"~/.ssh"}
SERVER=${SERVER:-}
WAIT=${WAIT:-60}

me=enroll-demo
say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { say "$*"; exit 1; }

[ $# -gt 0 ] || die "usage: $0 ROLE:NAME... (ROLE: operator, device or on-demand)"
operators='' devices='' on_demand=''
for arg; do
	name=${arg#*:}
	case $name in
	'' | *[!A-Za-z0-9._-]*) die "bad argument \"$arg\": want ROLE:NAME, NAME of letters, digits, '-', '_', '.'" ;;
	esac
	case $arg in
	operator:*) operators="$operators $name" ;;
	device:*) devices="$devices $name" ;;
	on-demand:*) on_demand="$on_demand $name" ;;
	*) die "bad argument \"$arg\": want ROLE:NAME, ROLE one of operator, device, on-demand" ;;
	esac
done

# `switchboard enroll` reads the server's host key (and, for on-demand devices, its MQTT CA),
# which the server creates when it first starts: the job may start before that has happened.
wait_for() {
	i=0
	until [ -s "$1" ]; do
		i=$((i + 1))
		[ "$i" -le "$WAIT" ] || die "no $1 after ${WAIT}s: is the server running with --state-dir $STATE_DIR?"
		sleep 1
	done
}
wait_for "$STATE_DIR/ssh_host_ed25519_key.pub"
[ -n "$SERVER" ] || wait_for "$STATE_DIR/public-addr"
[ -z "$on_demand" ] || wait_for "$STATE_DIR/mqtt-ca.pem"

# enrolled NAME: NAME has a key in OUT_DIR from an earlier run of the job.
enrolled() { [ -e "$OUT_DIR/$1/id_ed25519" ]; }

# enroll NAME ROLE [FLAG...] runs `switchboard enroll` into OUT_DIR/NAME. (Called as a plain
# command, never in `if` or `||`, so that a failure stops the job under set -e.)
enroll() {
	name=$1 role=$2
	shift 2
	if [ -n "$SERVER" ]; then
		set -- --server "$SERVER" "$@"
	fi
	"$SWITCHBOARD" enroll "$name" --role "$role" --out "$OUT_DIR/$name" --state-dir "$STATE_DIR" "$@" >/dev/null
	say "$name: enrolled as $role${*:+ ($*)}"
}

# Operators first: the devices' sshd trusts their keys.
for name in $operators; do
	if enrolled "$name"; then
		say "$name: enrolled before; kept"
		continue
	fi
	enroll "$name" operator
	if [ -n "$SERVER" ]; then set -- --server "$SERVER"; else set --; fi
	"$SWITCHBOARD" ssh-config --state-dir "$STATE_DIR" "$@" \
		--identity "$OPERATOR_SSH_DIR/id_ed25519" \
		--known-hosts "$OPERATOR_SSH_DIR/known_hosts" >"$OUT_DIR/$name/config"
done
for name in $devices $on_demand; do
	if enrolled "$name"; then
		say "$name: enrolled before; kept"
	else
		case " $on_demand " in
		*" $name "*) enroll "$name" device --device-dir "$DEVICE_DIR" --on-demand ;;
		*) enroll "$name" device --device-dir "$DEVICE_DIR" ;;
		esac
	fi
	# Rewritten at each run, so that operators added to the job's arguments get in.
	keys=$OUT_DIR/$name/authorized_keys
	: >"$keys.tmp"
	for op in $operators; do
		cat "$OUT_DIR/$op/id_ed25519.pub" >>"$keys.tmp"
	done
	chmod 0644 "$keys.tmp"
	mv -f "$keys.tmp" "$keys"
done
say "done:${operators:+ operators$operators;}${devices:+ devices$devices;}${on_demand:+ on demand$on_demand}"
