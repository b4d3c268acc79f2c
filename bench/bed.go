package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

// aggDevices is how many devices the aggregate figure reaches at once.
const aggDevices = 8

// Virtual ports on switchboard's devices, beside 22.
const (
	sinkPort   = 9
	sourcePort = 10
)

// A bed is everything both paths share: the target sshd of device dev42, the
// OpenSSH relay, switchboard, the sink and the source, keys and ssh configs.
type bed struct {
	l            *benchlab.Lab
	target       int // the target sshd's port
	relay, sb    int // the two relays' ports
	sink, source *endpoint
	// relayPorts are the relay's ports forwarded by the device uplinks.
	relayTarget, relaySink, relaySource int
	relayAgg                            [aggDevices]int
}

// A route is how an operator reaches the devices through one of the relays.
type route struct {
	name string
	// jump is the ssh arguments before the command for an ssh -J session
	// on dev42.
	jump []string
	// via is the ssh host that -W goes through; sink and source are the -W
	// targets of dev42's sink and source ports, agg those of the aggregate
	// devices' sink ports.
	via, sink, source string
	agg               [aggDevices]string
}

func (b *bed) routes() []route {
	sb := route{name: "switchboard", jump: []string{"-J", "sb", "dev42"}, via: "sb",
		sink: fmt.Sprintf("dev42:%d", sinkPort), source: fmt.Sprintf("dev42:%d", sourcePort)}
	relay := route{name: "openssh-relay", jump: []string{"relayed-dev42"}, via: "relay",
		sink: fmt.Sprintf("127.0.0.1:%d", b.relaySink), source: fmt.Sprintf("127.0.0.1:%d", b.relaySource)}
	for i := range aggDevices {
		sb.agg[i] = fmt.Sprintf("%s:%d", aggName(i), sinkPort)
		relay.agg[i] = fmt.Sprintf("127.0.0.1:%d", b.relayAgg[i])
	}
	return []route{sb, relay}
}

func aggName(i int) string { return fmt.Sprintf("dev%d", i+1) }

func keygen(l *benchlab.Lab, name, comment string) error {
	return benchlab.Sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", l.Path(name))
}

func sshdConfig(l *benchlab.Lab, name string, port int, extra string) (string, error) {
	if err := keygen(l, name+"_host", name); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
%s`, port, l.Path(name+"_host"), l.Path(name+"_authorized_keys"), extra)
	path := l.Path(name + "_config")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// setup starts the target sshd, the OpenSSH relay, switchboard, the sink and
// the source, and writes the keys and known_hosts the ssh configs use.
func setup(l *benchlab.Lab, sb string) (*bed, error) {
	b := &bed{l: l}
	var err error
	if b.sink, err = listen(false); err != nil {
		return nil, err
	}
	if b.source, err = listen(true); err != nil {
		b.sink.Close()
		return nil, err
	}
	if err := b.start(sb); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *bed) close() {
	b.sink.Close()
	b.source.Close()
}

func (b *bed) start(sb string) error {
	l := b.l
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	keys := []string{"operator", "dev42"}
	for i := range aggDevices {
		keys = append(keys, aggName(i))
	}
	pub := map[string]string{}
	for _, k := range keys {
		if err := keygen(l, k, k); err != nil {
			return err
		}
		pub[k] = strings.TrimSpace(benchlab.Read(l.Path(k + ".pub")))
	}
	for _, p := range []*int{&b.target, &b.relay, &b.sb, &b.relayTarget, &b.relaySink, &b.relaySource} {
		var err error
		if *p, err = benchlab.FreePort(); err != nil {
			return err
		}
	}
	for i := range b.relayAgg {
		var err error
		if b.relayAgg[i], err = benchlab.FreePort(); err != nil {
			return err
		}
	}

	// The device's target sshd, reached the same way through both relays.
	if err := os.WriteFile(l.Path("target_authorized_keys"), []byte(pub["operator"]+"\n"), 0o600); err != nil {
		return err
	}
	cfg, err := sshdConfig(l, "target", b.target, "")
	if err != nil {
		return err
	}
	if _, err := l.Start(nil, "/usr/sbin/sshd", "-D", "-e", "-f", cfg); err != nil {
		return err
	}
	// The OpenSSH relay: a stock sshd allowing forwarding, every key as root.
	var relayKeys strings.Builder
	for _, k := range keys {
		relayKeys.WriteString(pub[k] + "\n")
	}
	if err := os.WriteFile(l.Path("relay_authorized_keys"), []byte(relayKeys.String()), 0o600); err != nil {
		return err
	}
	cfg, err = sshdConfig(l, "relay", b.relay, "AllowTcpForwarding yes\nGatewayPorts no\n")
	if err != nil {
		return err
	}
	if _, err := l.Start(nil, "/usr/sbin/sshd", "-D", "-e", "-f", cfg); err != nil {
		return err
	}
	// switchboard: one listen line per device, one initiate line.
	var sbKeys strings.Builder
	for _, k := range keys[1:] {
		fmt.Fprintf(&sbKeys, "access=\"listen\",hostname=%q %s\n", k, pub[k])
	}
	fmt.Fprintf(&sbKeys, "access=\"initiate\" %s\n", pub["operator"])
	if err := os.MkdirAll(l.Path("state"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(l.Path("state", "authorized_keys"), []byte(sbKeys.String()), 0o600); err != nil {
		return err
	}
	if _, err := l.Start(nil, sb, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", b.sb),
		"--state-dir", l.Path("state"), "--log-level", "warn", "--mqtt", "off"); err != nil {
		return err
	}
	for _, s := range []struct {
		name string
		port int
	}{{"target sshd", b.target}, {"relay sshd", b.relay}, {"switchboard", b.sb}} {
		if err := benchlab.WaitPort(s.port); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}

	// Known hosts: both relays, and the target under the name both paths use.
	known := fmt.Sprintf("[127.0.0.1]:%d %s\n[127.0.0.1]:%d %s\ndev42 %s\n",
		b.relay, benchlab.Read(l.Path("relay_host.pub")),
		b.sb, benchlab.Read(l.Path("state", "ssh_host_ed25519_key.pub")),
		benchlab.Read(l.Path("target_host.pub")))
	return os.WriteFile(l.Path("known_hosts"), []byte(known), 0o600)
}

// sshConfig writes the ssh config for one cipher and returns its path. The
// cipher is in the file, not on the command line, because ssh -J passes -F
// but not -o to the ssh it runs for the jump hop.
func (b *bed) sshConfig(cipher string) (string, error) {
	text := fmt.Sprintf(`Host sb
  HostName 127.0.0.1
  Port %d
Host relay
  HostName 127.0.0.1
  Port %d
Host relayed-dev42
  HostName 127.0.0.1
  Port %d
  HostKeyAlias dev42
  ProxyJump relay
Host *
  User root
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
  Ciphers %s
`, b.sb, b.relay, b.relayTarget, b.l.Path("operator"), b.l.Path("known_hosts"), cipher)
	path := b.l.Path("ssh_config." + short(cipher))
	return path, os.WriteFile(path, []byte(text), 0o600)
}

// An uplink is one device's `ssh -R` to one relay.
type uplink struct {
	desc string
	cmd  *exec.Cmd
	log  *benchlab.Log
}

// dial starts every device's uplinks to both relays, stock `ssh -R` with the
// cipher in cfg, and waits until each relay routes every forwarded port. The
// caller stops the uplinks, also on error.
func (b *bed) dial(ctx context.Context, cfg string) ([]uplink, error) {
	b.source.send.Store(0) // the probes below may connect to it
	var ups []uplink
	start := func(desc, key string, args ...string) error {
		log := &benchlab.Log{}
		cmd, err := b.l.Start(log, "ssh", append([]string{"-F", cfg, "-i", b.l.Path(key), "-N",
			"-o", "ExitOnForwardFailure=yes"}, args...)...)
		if err != nil {
			return err
		}
		ups = append(ups, uplink{desc: desc, cmd: cmd, log: log})
		return nil
	}
	fwd := func(remote string, local int) []string {
		return []string{"-R", fmt.Sprintf("%s:localhost:%d", remote, local)}
	}
	relayFwd := func(port, local int) []string { return fwd(fmt.Sprintf("127.0.0.1:%d", port), local) }

	args := append(append(fwd("22", b.target), fwd(fmt.Sprint(sinkPort), b.sink.port())...),
		fwd(fmt.Sprint(sourcePort), b.source.port())...)
	if err := start("dev42's uplink to switchboard", "dev42", append(args, "dev42@sb")...); err != nil {
		return ups, err
	}
	args = append(append(relayFwd(b.relayTarget, b.target), relayFwd(b.relaySink, b.sink.port())...),
		relayFwd(b.relaySource, b.source.port())...)
	if err := start("dev42's uplink to the OpenSSH relay", "dev42", append(args, "relay")...); err != nil {
		return ups, err
	}
	for i := range aggDevices {
		name := aggName(i)
		if err := start(name+"'s uplink to switchboard", name,
			append(fwd(fmt.Sprint(sinkPort), b.sink.port()), name+"@sb")...); err != nil {
			return ups, err
		}
		if err := start(name+"'s uplink to the OpenSSH relay", name,
			append(relayFwd(b.relayAgg[i], b.sink.port()), "relay")...); err != nil {
			return ups, err
		}
	}

	// Neither relay tells the client when a forward is up. The relay's are
	// real ports on it; switchboard's are probed with ssh -W. A probe
	// carries no bytes, so the sink does not count it.
	logs := func() string {
		var s strings.Builder
		for _, u := range ups {
			if l := strings.TrimSpace(u.log.String()); l != "" {
				fmt.Fprintf(&s, "\n%s: %s", u.desc, l)
			}
		}
		return s.String()
	}
	relayPorts := map[string]int{"dev42's port 22": b.relayTarget, "dev42's sink": b.relaySink, "dev42's source": b.relaySource}
	for i, p := range b.relayAgg {
		relayPorts[aggName(i)+"'s sink"] = p
	}
	for what, p := range relayPorts {
		if err := benchlab.WaitPort(p); err != nil {
			return ups, fmt.Errorf("OpenSSH relay: the forward of %s never came up: %w%s", what, err, logs())
		}
	}
	targets := []string{"dev42:22", fmt.Sprintf("dev42:%d", sinkPort), fmt.Sprintf("dev42:%d", sourcePort)}
	for i := range aggDevices {
		targets = append(targets, fmt.Sprintf("%s:%d", aggName(i), sinkPort))
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			deadline := time.Now().Add(15 * time.Second)
			for {
				_, err := runSSH(ctx, cfg, nil, "-W", t, "sb")
				if err == nil {
					return
				}
				if ctx.Err() != nil || time.Now().After(deadline) {
					errs[i] = fmt.Errorf("switchboard: %s never became reachable: %w", t, err)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return ups, fmt.Errorf("%w%s", err, logs())
	}
	return ups, nil
}
