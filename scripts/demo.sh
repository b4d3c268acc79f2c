#!/usr/bin/env bash
# The switchboard demo: a small internet in network namespaces, as root.
#
#   ./scripts/demo.sh                 build the lab, run the steps, tear it all down
#   ./scripts/demo.sh --interactive   the same, then leave the lab up to try things by hand
#   ./scripts/demo.sh --cleanup       tear down every lab this script left (sbdemo-* namespaces)
#
# A public segment (198.51.100.0/24, a bridge in the "net" namespace) holds the
# server (switchboard serve, with its embedded MQTT broker) and the operator's
# machine. Two home routers masquerade their LANs (10.1.0.0/24, 10.2.0.0/24)
# onto it and drop new connections from outside, as home routers do. Behind
# router 1, dev1 runs `switchboard agent` and a real sshd; behind router 2,
# dev2 runs `switchboard agent --on-demand` and a real sshd. The operator
# reaches both by name with stock ssh and scp through the server.
#
# Only 10.0.0.0/8 and 198.51.100.0/24 addresses are used, inside namespaces
# this script creates (sbdemo-PID-*); nothing is sent anywhere else, and no
# interface, route or firewall rule of the host is touched. Everything is
# removed on exit, also on Ctrl-C or SIGTERM, and a run first sweeps the
# namespaces of earlier runs that are gone. Each step waits for what it needs
# with a timeout; the script exits non-zero, naming the step, if one fails.
# The binary is ${SWITCHBOARD:-bin/switchboard} (`make demo` builds it).
set -Eeuo pipefail

usage() {
  cat <<EOF
usage: $0 [--interactive | --cleanup]
  (no flag)       build the NAT lab, run the demo steps, tear everything down
  --interactive   the same, then leave the lab up and print how to use it (Ctrl-C ends it)
  --cleanup       tear down any lab left by this script (sbdemo-* namespaces, their processes)
Needs root. SWITCHBOARD=path overrides the binary (default bin/switchboard).
EOF
}

mode=run
case "${1:-}" in
  "") ;;
  --interactive) mode=interactive ;;
  --cleanup) mode=cleanup ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
[ $# -le 1 ] || { usage >&2; exit 2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root (it creates network namespaces): sudo $0 $*" >&2
  exit 1
fi

here=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=sbdemo # every namespace is sbdemo-PID-NAME, every work dir /tmp/sbdemo-PID.XXXXXX

# ---------------------------------------------------------------------------
# Output: bold captions on a terminal, plain text otherwise (CI logs).

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ] && [ "${TERM:-dumb}" != dumb ]; then
  B=$'\e[1m' DIM=$'\e[2m' OK=$'\e[32m' BAD=$'\e[31m' N=$'\e[0m'
else
  B='' DIM='' OK='' BAD='' N=''
fi
step_no=0
step_title=setup
step() { # step TITLE [CAPTION LINE]...
  step_no=$((step_no + 1))
  step_title=$1
  shift
  printf '\n%s[%d] %s%s\n' "$B" "$step_no" "$step_title" "$N"
  local l
  for l in "$@"; do printf '    %s\n' "$l"; done
}
section() { printf '\n%s== %s%s\n' "$B" "$1" "$N"; }
note() { printf '    %s\n' "$@"; }
good() { printf '    %s✓ %s%s\n' "$OK" "$*" "$N"; }
indent() { sed 's/^/      /'; }

# quote ARGS: the words as one would type them in a shell.
quote() {
  local a words=()
  for a; do
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then words+=("$a"); else words+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf "%s" "${words[*]}"
}

now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
secs() { printf '%d.%02d s' $(($1 / 1000)) $(($1 % 1000 / 10)); } # secs MILLISECONDS

# ---------------------------------------------------------------------------
# Failure: one clear line naming the step, then the tails of the logs.

work='' # the run's directory; set once created
fail() {
  trap - ERR
  printf '\n%sdemo: FAILED in step %d (%s): %s%s\n' "$BAD" "$step_no" "$step_title" "$*" "$N" >&2
  if [ -n "$work" ] && [ -d "$work/logs" ]; then
    local f
    for f in "$work"/logs/*.log; do
      [ -s "$f" ] || continue
      printf '\n--- last lines of %s\n' "${f#"$work"/}" >&2
      tail -n 15 "$f" >&2
    done
  fi
  exit 1
}
last_run='' # the last command run showed, for on_err
on_err() { # from the ERR trap: an unexpected command failed
  ((BASH_SUBSHELL == 0)) || return 0
  # shellcheck disable=SC2016 # the literal command text
  if [ "$3" = 'return "$rc"' ] && [ -n "$last_run" ]; then
    fail "\`$last_run\` exited with status $1"
  fi
  fail "line $2: \`$3\` exited with status $1"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

# The processes that must stay up while the demo runs: name → pid.
declare -A watched=()
# check_watched: fail at once if a watched process has exited.
check_watched() {
  local name
  for name in "${!watched[@]}"; do
    alive "${watched[$name]}" || fail "$name (pid ${watched[$name]}) exited unexpectedly"
  done
}

# Commands that may take a while run in the background while the script
# waits for them: a Ctrl-C or SIGTERM then interrupts the wait at once and
# the trap tears down (bash would otherwise let ssh, which handles SIGINT
# itself, swallow a Ctrl-C). $current is that command, for the cleanup.
current=''
# bg_wait FILE COMMAND...: run COMMAND (a function too) so, its output to
# FILE, and return its status. (The redirection is the background command's
# alone: the trap, run during the wait, prints to the script's own output.)
bg_wait() {
  local st=0 to=$1
  shift
  "$@" >"$to" 2>&1 &
  current=$!
  wait "$current" || st=$?
  current=''
  return "$st"
}

# await SECONDS WHAT COMMAND...: poll COMMAND every 0.1 s until it succeeds,
# and fail the step after SECONDS, or as soon as a watched process exits.
await() {
  local limit=$1 what=$2 t0
  shift 2
  t0=$(now_ms)
  until bg_wait /dev/null "$@"; do
    check_watched
    (($(now_ms) - t0 < limit * 1000)) || fail "timed out after ${limit} s waiting for $what"
    sleep 0.1
  done
}

# count FILE STRING...: how many lines of FILE contain every STRING.
count() {
  local f=$1
  shift
  [ -f "$f" ] || { echo 0; return; }
  awk 'BEGIN { n = ARGC - 1; for (i = 1; i <= n; i++) p[i] = ARGV[i]; ARGC = 1 }
       { for (i = 1; i <= n; i++) if (!index($0, p[i])) next; c++ }
       END { print c + 0 }' "$@" <"$f"
}
# log_ms FILE STRING...: the time, in ms since the epoch, of the last JSON log
# line of FILE containing every STRING.
log_ms() {
  local f=$1 line t
  shift
  line=$(awk 'BEGIN { n = ARGC - 1; for (i = 1; i <= n; i++) p[i] = ARGV[i]; ARGC = 1 }
       { for (i = 1; i <= n; i++) if (!index($0, p[i])) next; l = $0 }
       END { print l }' "$@" <"$f")
  t=$(sed -n 's/^{"time":"\([^"]*\)".*/\1/p' <<<"$line")
  [ -n "$t" ] || return 1
  date -d "$t" +%s%3N
}
# has_more FILE N STRING...: FILE has more than N lines containing every STRING.
has_more() { local f=$1 n=$2; shift 2; [ "$(count "$f" "$@")" -gt "$n" ]; }

# alive PID: the process exists and is not a zombie.
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st:0:1}" != Z ]
}
gone() { ! alive "$1"; }

# ---------------------------------------------------------------------------
# Tearing down: this run's lab, or the leftovers of earlier runs.

# kill_ns_procs NS: stop every process inside namespace NS (TERM, then KILL).
kill_ns_procs() {
  local ns=$1 pids p sig=TERM t0
  t0=$(now_ms)
  while pids=$(ip netns pids "$ns" 2>/dev/null) && [ -n "$pids" ]; do
    (($(now_ms) - t0 < 2000)) || sig=KILL # an interactive shell ignores TERM
    (($(now_ms) - t0 < 4000)) || return 0
    for p in $pids; do kill -"$sig" "$p" 2>/dev/null || true; done
    sleep 0.1
  done
}

# demo_alive PID: PID is a running demo.sh (whose lab must be left alone).
demo_alive() {
  [ "$1" != "$$" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'demo\.sh'
}

# sweep [all]: remove the namespaces and work dirs of earlier runs that are
# gone; with "all" (--cleanup), first ask running demos to tear theirs down.
sweep() {
  local ns pid pids=() swept=0 d
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-[0-9]*-" || true); do
    pid=${ns#"$PREFIX"-}
    pid=${pid%%-*}
    if demo_alive "$pid" && [[ " ${pids[*]-} " != *" $pid "* ]]; then pids+=("$pid"); fi
  done
  if [ "${1:-}" != all ]; then
    for pid in ${pids[@]+"${pids[@]}"}; do
      echo "demo: leaving the lab of demo $pid alone: it is running (./scripts/demo.sh --cleanup ends it)"
    done
    pids=()
  fi
  for pid in ${pids[@]+"${pids[@]}"}; do
    echo "demo: asking the running demo $pid to tear down its lab"
    kill -TERM "$pid" 2>/dev/null || true
    local t0
    t0=$(now_ms)
    while alive "$pid" && (($(now_ms) - t0 < 20000)); do sleep 0.1; done
    alive "$pid" && echo "demo: demo $pid is still running after 20 s; removing its namespaces anyway" >&2
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-[0-9]*-" | sort -r || true); do
    pid=${ns#"$PREFIX"-}
    pid=${pid%%-*}
    if [ "${1:-}" != all ] && demo_alive "$pid"; then continue; fi
    kill_ns_procs "$ns"
    ip netns del "$ns" && swept=$((swept + 1))
  done
  for d in /tmp/"$PREFIX"-[0-9]*.*; do
    [ -d "$d" ] || continue
    pid=${d#/tmp/"$PREFIX"-}
    pid=${pid%%.*}
    if [ "${1:-}" != all ] && demo_alive "$pid"; then continue; fi
    [ "$pid" != "$$" ] && rm -rf "$d"
  done
  [ "$swept" -eq 0 ] || echo "demo: removed $swept namespace(s) left by an earlier run"
}

if [ "$mode" = cleanup ]; then
  sweep all
  left=$(ip netns list | grep -c "^$PREFIX-" || true)
  if [ "$left" -ne 0 ]; then echo "demo: $left sbdemo namespace(s) could not be removed" >&2; exit 1; fi
  echo "demo: no sbdemo lab is left"
  exit 0
fi

# ---------------------------------------------------------------------------
# This run's lab.

sb=${SWITCHBOARD:-$here/bin/switchboard}
[[ $sb == /* ]] || sb=$PWD/$sb
[ -x "$sb" ] || { echo "demo: $sb not built; run 'make demo'" >&2; exit 1; }
"$here/scripts/test-deps.sh"
for c in ip iptables nc ssh scp ssh-keygen /usr/sbin/sshd unshare setsid sha256sum timeout awk; do
  command -v "$c" >/dev/null || { echo "demo: $c is missing (scripts/test-deps.sh installs the rest)" >&2; exit 1; }
done

sweep

started=$(now_ms)
work=$(mktemp -d "/tmp/$PREFIX-$$.XXXXXX")
chmod 755 "$work"
mkdir -p "$work/logs"

# The machines: name → namespace, address and working directory.
declare -A NS=(
  [net]=$PREFIX-$$-net [server]=$PREFIX-$$-server [operator]=$PREFIX-$$-operator
  [router1]=$PREFIX-$$-router1 [router2]=$PREFIX-$$-router2 [dev1]=$PREFIX-$$-dev1 [dev2]=$PREFIX-$$-dev2
)
SERVER_IP=198.51.100.10
OPERATOR_IP=198.51.100.20
declare -A WAN=([router1]=198.51.100.101 [router2]=198.51.100.102)
declare -A LAN=([1]=10.1.0 [2]=10.2.0)
PIVOT=$SERVER_IP:2222
IDLE=5s

made_ns=()  # namespaces this run created, in order
pids=()     # background processes this run started
lab_up=''   # set once the interactive lab is handed over

# stop PID...: SIGTERM, and SIGKILL what is still there 5 s later.
stop() {
  local p t0
  for p; do kill -TERM "$p" 2>/dev/null; done
  t0=$(now_ms)
  for p; do
    while alive "$p" && (($(now_ms) - t0 < 5000)); do sleep 0.05; done
    if alive "$p"; then
      echo "demo: $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-80) (pid $p) did not stop within 5 s of SIGTERM; killing it" >&2
      kill -KILL "$p" 2>/dev/null
    fi
  done
}

server_pid=''
cleanup() {
  local rc=$? p ns
  trap - ERR EXIT INT TERM
  set +e
  [ -z "$lab_up" ] || rc=0 # the interactive lab ends with Ctrl-C or --cleanup: not a failure
  if ((${#made_ns[@]} > 0)); then printf '\n%sTearing down the lab%s\n' "$B" "$N"; fi
  # The devices first (an on-demand agent says "offline" to the broker as it
  # goes), then the server.
  local devices=()
  for p in ${current:+"$current"} ${pids[@]+"${pids[@]}"}; do
    [ "$p" = "$server_pid" ] || devices+=("$p")
  done
  stop ${devices[@]+"${devices[@]}"}
  stop ${server_pid:+"$server_pid"}
  wait 2>/dev/null
  for ((i = ${#made_ns[@]} - 1; i >= 0; i--)); do
    ns=${made_ns[i]}
    kill_ns_procs "$ns" # sshd's sessions, anything a user started in the lab
    ip netns del "$ns" 2>/dev/null || echo "demo: could not delete namespace $ns" >&2
  done
  [ -z "$work" ] || rm -rf "$work"
  if ((${#made_ns[@]} > 0)); then
    note "removed ${#made_ns[@]} namespaces (with their veths, bridge, routes and iptables rules), ended the ${#pids[@]} processes it started, deleted $work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'trap - INT; echo; if [ -n "$lab_up" ]; then echo "demo: Ctrl-C"; else echo "demo: interrupted"; fi; exit 130' INT
trap 'trap - TERM; echo; if [ -n "$lab_up" ]; then echo "demo: asked to end (SIGTERM)"; else echo "demo: terminated"; fi; exit 143' TERM

# inside MACHINE COMMAND...: run COMMAND inside MACHINE's namespace.
inside() { local m=$1; shift; ip netns exec "${NS[$m]}" "$@"; }

# in_dir MACHINE COMMAND...: exec COMMAND in MACHINE's directory.
in_dir() { cd "$work/$1" && shift && exec "$@"; }

# run MACHINE COMMAND...: show "MACHINE$ COMMAND" and run it there, in
# MACHINE's directory, with a 60 s limit; its output is shown indented and
# kept in $out. Sets $rc and $took (milliseconds); returns COMMAND's status.
out=''
cut_at='' cut_note='' # run shows the output up to a line matching $cut_at, then $cut_note
rc=0
took=0
run() {
  local m=$1 t0
  shift
  last_run="$m\$ $(quote "$@")"
  printf '  %s%s$%s %s\n' "$DIM" "$m" "$N" "$(quote "$@")"
  t0=$(now_ms)
  rc=0
  bg_wait "$work/out" in_dir "$m" timeout 60 ip netns exec "${NS[$m]}" "$@" || rc=$?
  took=$(($(now_ms) - t0))
  out=$(cat "$work/out")
  if [ -n "$cut_at" ] && grep -q "$cut_at" "$work/out"; then
    sed "/$cut_at/,\$d" "$work/out" | indent
    printf '      %s (… %s)\n' "$cut_at" "$cut_note"
  elif [ -n "$out" ]; then
    indent <"$work/out"
  fi
  cut_at=
  return "$rc"
}

# start MACHINE LOG COMMAND...: start COMMAND in the background in MACHINE's
# namespace, stderr and stdout to logs/LOG; its pid is in $last_pid. It runs
# in its own session, so that a Ctrl-C reaches only this script, which then
# stops everything in order.
last_pid=''
start() {
  local m=$1 log=$2
  shift 2
  (cd "$work/$m" && exec setsid ip netns exec "${NS[$m]}" "$@") >>"$work/logs/$log" 2>&1 </dev/null &
  last_pid=$!
  pids+=("$last_pid")
}

# ---------------------------------------------------------------------------
printf '%sswitchboard demo%s: devices behind NAT, reached by name with stock ssh (%s)\n' "$B" "$N" "$("$sb" version 2>/dev/null || echo "?")"
section "The lab: a small internet in network namespaces"
cat <<EOF

        the "internet": 198.51.100.0/24 (a bridge in namespace ${NS[net]})
   ──────┬──────────────────┬──────────────────────┬──────────────────────┬──────
         │                  │                      │                      │
   server .10          operator .20         home router 1 .101     home router 2 .102
   switchboard serve   ssh, scp             NAT + drops inbound    NAT + drops inbound
   :2222 ssh                                       │ 10.1.0.1             │ 10.2.0.1
   :8883 MQTT                                      │                      │
                                            dev1 10.1.0.2          dev2 10.2.0.2
                                            always on: agent       on demand: agent
                                            + sshd                 --on-demand + sshd

  Each machine is a namespace (${PREFIX}-$$-<machine>); "operator\$ CMD" below means CMD
  runs in the operator's namespace, in $work/operator.
EOF

for m in net server operator router1 router2 dev1 dev2; do
  ip netns add "${NS[$m]}"
  made_ns+=("${NS[$m]}")
  # IPv4 only: no IPv6 link-local addresses, so no neighbour discovery chatter.
  inside "$m" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip -n "${NS[$m]}" link set lo up
  mkdir -p "$work/$m"
done
# The internet: a bridge, with the server, the operator and both routers' WAN sides on it.
ip -n "${NS[net]}" link add br0 type bridge
ip -n "${NS[net]}" link set br0 up
plug() { # plug MACHINE IFNAME ADDRESS/24: a veth from MACHINE to the bridge
  ip -n "${NS[$1]}" link add "$2" type veth peer name "$1" netns "${NS[net]}"
  ip -n "${NS[net]}" link set "$1" master br0 up
  ip -n "${NS[$1]}" addr add "$3" dev "$2"
  ip -n "${NS[$1]}" link set "$2" up
}
plug server eth0 "$SERVER_IP/24"
plug operator eth0 "$OPERATOR_IP/24"
for i in 1 2; do
  r=router$i d=dev$i
  plug "$r" wan "${WAN[$r]}/24"
  # The home LAN: the device behind its router.
  ip -n "${NS[$d]}" link add eth0 type veth peer name lan netns "${NS[$r]}"
  ip -n "${NS[$r]}" addr add "${LAN[$i]}.1/24" dev lan
  ip -n "${NS[$r]}" link set lan up
  ip -n "${NS[$d]}" addr add "${LAN[$i]}.2/24" dev eth0
  ip -n "${NS[$d]}" link set eth0 up
  ip -n "${NS[$d]}" route add default via "${LAN[$i]}.1"
  # The operator even has a route to the LAN (the best case for a direct
  # attempt): its packets reach the router, which drops them.
  ip -n "${NS[operator]}" route add "${LAN[$i]}.0/24" via "${WAN[$r]}"
  inside "$r" sysctl -qw net.ipv4.ip_forward=1
  # A home router: masquerade the LAN, let replies in, drop anything new from outside.
  while read -r rule; do
    # shellcheck disable=SC2086 # the rule is words
    inside "$r" iptables -w $rule
  done <<EOF
-t nat -A POSTROUTING -s ${LAN[$i]}.0/24 -o wan -j MASQUERADE
-P FORWARD DROP
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i lan -o wan -j ACCEPT
-A FORWARD -i wan -o lan -j DROP
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i wan -j DROP
EOF
done
echo
note "7 namespaces, a bridge, 6 veth pairs; routers 1 and 2 masquerade 10.1.0.0/24 and 10.2.0.0/24"

# ---------------------------------------------------------------------------
section "The server (the pivot), on the internet at $PIVOT"
# Let "switchboard" in the commands shown be the binary under test.
mkdir -p "$work/bin" "$work/server/state"
ln -s "$sb" "$work/bin/switchboard"
export PATH="$work/bin:$PATH"
echo "# operators and devices are added by switchboard enroll" >"$work/server/state/authorized_keys"
serve=(switchboard serve --listen "$PIVOT" --state-dir state --public-addr "$PIVOT"
  --mqtt-listen :8883 --mqtt-hosts "$SERVER_IP" --wake-timeout 15s)
printf '  %sserver$%s %s &\n' "$DIM" "$N" "$(quote "${serve[@]}")"
start server server.log "${serve[@]}"
server_pid=$last_pid
watched[server]=$last_pid
slog=$work/logs/server.log
await 10 "the server to listen on $PIVOT" has_more "$slog" 0 '"msg":"listening"' "\"addr\":\"$PIVOT\""
await 10 "the MQTT broker to listen" has_more "$slog" 0 '"msg":"mqtt broker listening"'
note "listening: SSH on $PIVOT, the embedded MQTT broker on $SERVER_IP:8883"

# enroll NAME ARGS...: run switchboard enroll on the server, show its output,
# and wait until the running server has reloaded authorized_keys.
entries=0 # lines in authorized_keys: each enroll adds one
enroll() {
  run server switchboard enroll "$1" --state-dir state "${@:2}" || fail "switchboard enroll $1 failed"
  entries=$((entries + 1))
  await 10 "the server to load authorized_keys with $1" \
    has_more "$slog" 0 '"msg":"authorized_keys loaded"' "\"entries\":$entries,"
}
section "An operator, alice: a key and an ssh_config block from switchboard enroll"
note "(the server and the operator's machine share this disk, so enroll writes straight to the operator's directory)"
enroll alice --role operator --out "$work/operator/alice"
# The printed block is the operator's ssh config, from its first comment line on.
sed -n '/^# switchboard: ssh client configuration/,$p' <<<"$out" >"$work/operator/ssh_config"
grep -q '^Host pivot' "$work/operator/ssh_config" || fail "switchboard enroll printed no 'Host pivot' block"

section "The devices: an sshd, switchboard enroll on the server, the files copied over, the agent"
# on_device I: sshd on devI, in its own hostname (UTS) and mount namespace, where
# /root is the device's own directory.
for i in 1 2; do
  d=dev$i
  mkdir -p "$work/$d/etc/ssh" "$work/$d/root" "$work/$d/etc/switchboard"
  ssh-keygen -q -t ed25519 -N '' -C "$d" -f "$work/$d/etc/ssh/ssh_host_ed25519_key"
  cp "$work/operator/alice/id_ed25519.pub" "$work/$d/etc/ssh/authorized_keys"
  cat >"$work/$d/etc/ssh/sshd_config" <<EOF
ListenAddress 0.0.0.0:22
HostKey $work/$d/etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile $work/$d/etc/ssh/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
EOF
  # The operator pins each device's sshd host key, under the device's name.
  echo "$d $(cat "$work/$d/etc/ssh/ssh_host_ed25519_key.pub")" >>"$work/operator/known_hosts.devices"
done
# sshd's privilege separation directory (the ssh service makes it at boot). It
# stays: another demo's sshd may need it, and it is where Debian expects it.
mkdir -p /run/sshd
for i in 1 2; do
  d=dev$i
  # shellcheck disable=SC2016 # expanded by that sh
  start "$d" "$d-sshd.log" unshare --uts --mount sh -c \
    'hostname "$1" && mount --bind "$2/root" /root && exec /usr/sbin/sshd -D -e -f "$2/etc/ssh/sshd_config"' \
    sh "$d" "$work/$d"
  watched[$d sshd]=$last_pid
done

cat >>"$work/operator/ssh_config" <<EOF

# Added by the demo: the devices' own sshd, where alice logs in as root with the same key.
# Their host keys are pinned in known_hosts.devices (on a real device, check them with
# ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub there).
Host dev1 dev2
    User root
    IdentityFile $work/operator/alice/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $work/operator/known_hosts.devices
    StrictHostKeyChecking yes
Host *
    BatchMode yes
    ConnectTimeout 10
EOF

note "Each device runs a real OpenSSH sshd on port 22, with its own host key, alice's key" \
  "authorised for root, and its own hostname and /root (a UTS and a mount namespace)."
echo
note "dev1: always on. Its files go to its own /etc/switchboard (here $work/dev1/etc/switchboard)."
cut_at='Next steps:' cut_note='copy the directory to the device, run the agent there: done next'
enroll dev1 --role device --out enrolled/dev1 --device-dir "$work/dev1/etc/switchboard"
run dev1 cp -r ../server/enrolled/dev1/. etc/switchboard/
note "(on a real device: scp -r enrolled/dev1/. root@dev1:/etc/switchboard/)"
agent1=(switchboard agent --config "$work/dev1/etc/switchboard/agent.yaml")
printf '  %sdev1$%s %s &\n' "$DIM" "$N" "$(quote "${agent1[@]}")"
start dev1 dev1-agent.log "${agent1[@]}"
agent1_pid=$last_pid
watched[dev1 agent]=$last_pid
await 15 "dev1 to register with the server" \
  has_more "$slog" 0 '"msg":"device registered"' '"device":"dev1"'
note "dev1 connected out to the server and registered dev1:22"

echo
note "dev2: on demand. The same, with --on-demand: enroll also issues its MQTT client certificate."
cut_at='Next steps:' cut_note='as for dev1'
enroll dev2 --role device --on-demand --out enrolled/dev2 --device-dir "$work/dev2/etc/switchboard"
run dev2 cp -r ../server/enrolled/dev2/. etc/switchboard/
agent2=(switchboard agent --config "$work/dev2/etc/switchboard/agent.yaml" --idle-timeout "$IDLE")
printf '  %sdev2$%s %s &\n' "$DIM" "$N" "$(quote "${agent2[@]}")"
start dev2 dev2-agent.log "${agent2[@]}"
watched[dev2 agent]=$last_pid
a2log=$work/logs/dev2-agent.log
await 15 "dev2 to say it is asleep" has_more "$a2log" 0 '"msg":"asleep"'
note "dev2 holds only an MQTT connection to the broker, and sleeps"

for i in 1 2; do
  await 10 "dev$i's sshd to listen" inside "dev$i" nc -z -w 1 "${LAN[$i]}.2" 22
done
note "setup took $(secs $(($(now_ms) - started)))"

# op ARGS...: the operator's ssh, with the config enroll printed.
# ---------------------------------------------------------------------------
section "The demo"

step "The devices are behind NAT: nobody on the internet can connect to them" \
  "dev1's sshd listens on 10.1.0.2:22. Its own home router reaches it; the operator's" \
  "machine cannot, even with a route to 10.1.0.0/24: router 1 drops new connections from" \
  "outside, so the attempt times out. Router 1's public address lets nothing in either."
run router1 nc -v -z -w 2 10.1.0.2 22 || fail "router 1 cannot reach dev1's sshd on its own LAN"
drops() { inside router1 iptables -w -nvx -L FORWARD | awk '$3 == "DROP" && $6 == "wan" && $7 == "lan" { print $1 }'; }
d0=$(drops)
if run operator nc -v -z -w 2 10.1.0.2 22; then fail "the operator reached dev1 directly, through the NAT"; fi
((took >= 1900)) || fail "the direct attempt failed after $(secs "$took"), before nc's 2 s timeout: refused, not dropped"
d1=$(drops)
good "no answer: timed out after $(secs "$took"); router 1 dropped $((d1 - d0)) packets from the internet to its LAN"
if run operator nc -v -z -w 2 "${WAN[router1]}" 22; then fail "the operator connected to router 1's public address"; fi
good "nothing answers at router 1's public address either (timed out after $(secs "$took"))"

step "The operator asks the server which devices it may reach" \
  "dev1 keeps an SSH connection out to the server: the server sees it coming from" \
  "198.51.100.101, its router's public address (that is the NAT). dev2 keeps only an MQTT" \
  "connection, and is asleep."
run operator ssh -F ssh_config pivot ls || fail "ssh pivot ls failed"
grep -Eq '^dev1 .*connected .*198\.51\.100\.101:' <<<"$out" || fail "ls does not show dev1 connected from 198.51.100.101"
grep -Eq '^dev2 .*asleep' <<<"$out" || fail "ls does not show dev2 asleep"
good "dev1 connected from 198.51.100.101 (router 1), dev2 asleep"

# on_device OUT DEV I: OUT is the remote command's output on devI.
remote='hostname; ip -4 -br addr show eth0; ip route show default; ss -Htn dst 198.51.100.10'
on_device() {
  grep -qx "$2" <<<"$1" && grep -q "${LAN[$3]}.2/24" <<<"$1"
}

step "ssh to dev1 by name, through the server" \
  "Stock OpenSSH: -J pivot makes ssh ask the server for a channel to dev1:22, and the" \
  "server joins it to dev1's own outgoing connection. The command runs on dev1, behind NAT;" \
  "its last line is that connection out, from 10.1.0.2 (the server saw 198.51.100.101)."
run operator ssh -F ssh_config -J pivot dev1 "$remote" || fail "ssh -J pivot dev1 failed"
on_device "$out" dev1 1 || fail "the command did not run on dev1 (10.1.0.2)"
took1=$took
good "on dev1 (10.1.0.2, behind router 1); took $(secs "$took1")"

step "ssh to dev2 by name: the server wakes it" \
  "dev2 is asleep. The server publishes a wake-up on MQTT, dev2's agent dials in over SSH," \
  "and the session goes through: same command, at most a short pause. On dev2 you see both" \
  "connections out: MQTT (:8883), and SSH (:2222) since the wake-up."
a2before=$(count "$a2log" '"msg":"woken"')
run operator ssh -F ssh_config -J pivot dev2 "$remote" || fail "ssh -J pivot dev2 failed"
on_device "$out" dev2 2 || fail "the command did not run on dev2 (10.2.0.2)"
dev2_done=$(now_ms)
has_more "$a2log" "$a2before" '"msg":"woken"' || fail "dev2's agent did not log that it was woken"
sent_ms=$(log_ms "$slog" '"msg":"wake sent"' '"device":"dev2"') || fail "the server did not log its wake-up for dev2"
reg_ms=$(log_ms "$slog" '"msg":"device registered"' '"device":"dev2"') || fail "the server did not log dev2 registering"
good "on dev2 (10.2.0.2, behind router 2); took $(secs "$took") in all, dev1 (connected) $(secs "$took1")"
good "the wake-up: $((reg_ms - sent_ms)) ms from the server publishing it to dev2 dialled in and registered"
run operator ssh -F ssh_config pivot ls dev2 || fail "ssh pivot ls dev2 failed"
grep -Eq '^dev2 .*connected' <<<"$out" || fail "ls does not show dev2 connected after the wake-up"
good "dev2 is connected now, while it is being used"

step "scp a file to dev1 and back, and compare checksums" \
  "scp, sftp and rsync work through the server the same way: -J pivot."
head -c 1M /dev/urandom >"$work/operator/payload.bin"
run operator scp -F ssh_config -J pivot payload.bin dev1: || fail "scp to dev1 failed"
run operator ssh -F ssh_config -J pivot dev1 sha256sum payload.bin || fail "sha256sum on dev1 failed"
there=${out%% *}
run operator scp -F ssh_config -J pivot dev1:payload.bin payload.back || fail "scp from dev1 failed"
run operator sha256sum payload.bin payload.back
sent=$(sha256sum <"$work/operator/payload.bin")
sent=${sent%% *}
back=$(sha256sum <"$work/operator/payload.back")
back=${back%% *}
if [ "$sent" != "$there" ] || [ "$sent" != "$back" ]; then
  fail "checksums differ: sent ${sent:0:16}, on dev1 ${there:0:16}, back ${back:0:16}"
fi
good "1 MiB there and back, same sha256 here, on dev1 and back here: ${sent:0:16}…"

step "dev2 goes back to sleep once nobody uses it" \
  "Its agent runs with --idle-timeout $IDLE: $IDLE after its last session closed, it hangs up" \
  "and is back to MQTT only. Waiting for it (at most 20 s)…"
a2sleep=$(count "$a2log" '"msg":"asleep"')
await 20 "dev2's agent to hang up and say it is asleep" has_more "$a2log" "$a2sleep" '"msg":"asleep"'
slept=$(($(now_ms) - dev2_done))
note "dev2's agent logged:"
grep '"msg":"hanging up"' "$a2log" | tail -n 1 | indent
dev2_asleep() { inside operator ssh -F "$work/operator/ssh_config" pivot ls --json dev2 | grep -Eq '"state": *"asleep"'; }
await 10 "ls to show dev2 asleep" dev2_asleep
run operator ssh -F ssh_config pivot ls || fail "ssh pivot ls failed"
grep -Eq '^dev2 .*asleep' <<<"$out" || fail "ls does not show dev2 asleep again"
good "dev2 asleep again, $(secs "$slept") after its last session ended"

step "A device that is off: the operator reads why, in one sentence" \
  "dev1's agent is stopped (as when the device is switched off). The server remembers when" \
  "it last saw dev1 and says so, instead of a bare 'connection refused'."
a1gone=$(count "$slog" '"msg":"device disconnected"' '"device":"dev1"')
printf '  %sdev1$%s kill -TERM %s   # the agent\n' "$DIM" "$N" "$agent1_pid"
unset "watched[dev1 agent]"
kill -TERM "$agent1_pid"
await 10 "dev1's agent to exit" gone "$agent1_pid"
await 10 "the server to see dev1 leave" has_more "$slog" "$a1gone" '"msg":"device disconnected"' '"device":"dev1"'
if run operator ssh -F ssh_config -J pivot dev1 true; then fail "ssh to dev1 succeeded with its agent stopped"; fi
grep -Eq 'switchboard: device "dev1" is offline \(last seen [^)]+\)' <<<"$out" ||
  fail "the refusal does not say that dev1 is offline (last seen …)"
good "$(grep -Eo 'switchboard: device "dev1" is offline \(last seen [^)]+\)' <<<"$out")"
run operator ssh -F ssh_config pivot ls || fail "ssh pivot ls failed"
grep -Eq '^dev1 .*offline' <<<"$out" || fail "ls does not show dev1 offline"

printf '\n%sdemo: all %d steps passed in %s%s\n' "$B$OK" "$step_no" "$(secs $(($(now_ms) - started)))" "$N"

if [ "$mode" = interactive ]; then
  section "The lab is yours"
  printf '  %sdev1$%s %s &   # dev1 back on\n' "$DIM" "$N" "$(quote "${agent1[@]}")"
  registered=$(count "$slog" '"msg":"device registered"' '"device":"dev1"')
  start dev1 dev1-agent.log "${agent1[@]}"
  await 15 "dev1 to register again" has_more "$slog" "$registered" '"msg":"device registered"' '"device":"dev1"'
  cat >"$work/operator/bashrc" <<EOF
cd $work/operator
alias ssh='ssh -F $work/operator/ssh_config' scp='scp -F $work/operator/ssh_config' sftp='sftp -F $work/operator/ssh_config'
PS1='operator:\W\$ '
echo "You are on the operator's machine ($OPERATOR_IP). ssh, scp and sftp use $work/operator/ssh_config."
EOF
  cat <<EOF

  In another terminal, become the operator:
    sudo ip netns exec ${NS[operator]} bash --rcfile $work/operator/bashrc

  and try (ssh/scp/sftp there use ssh_config, the block enroll printed, plus the devices' logins):
    ssh pivot ls                        the devices, their state, where they connect from
    ssh -J pivot dev1                   a shell on dev1, behind router 1's NAT
    ssh -J pivot dev2                   dev2 wakes up; it sleeps again $IDLE after you leave
    scp -J pivot ssh_config dev2:       files both ways; sftp -J pivot dev2 too
    ssh pivot status dev2               one device in detail
    nc -v -z -w 2 10.2.0.2 22           still no direct way in

  Other machines: sudo ip netns exec ${NS[dev1]} bash   (also ${NS[server]}, ${NS[router1]}, …)
  Logs: $work/logs/ (server.log, dev1-agent.log, dev2-agent.log, …)

  Tear it all down: Ctrl-C here, or ./scripts/demo.sh --cleanup from another terminal.
EOF
  lab_up=1
  sleep infinity &
  pids+=($!)
  wait $! || true
fi
