// Command bench measures switchboard against the natural alternative, a
// plain OpenSSH sshd used as the relay (the device runs `ssh -R` on it, the
// operator `ssh -J` through it), in one run on this machine, and prints both
// with their ratio.
//
//	go run ./bench -switchboard bin/switchboard [-runs 5] [-size 1GiB]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

func main() {
	sb := flag.String("switchboard", "bin/switchboard", "switchboard binary")
	runs := flag.Int("runs", 5, "runs of each throughput measurement")
	connects := flag.Int("connects", 20, "runs of each connect-time measurement")
	size := flag.Int64("size", 1<<30, "bytes per throughput run")
	flag.Parse()
	if err := run(*sb, *runs, *connects, *size); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func sshdConfig(l *benchlab.Lab, name string, port int, extra string) (string, error) {
	if err := benchlab.Sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", l.Path(name+"_host")); err != nil {
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

func run(sb string, runs, connects int, size int64) error {
	sb, _ = filepath.Abs(sb)
	l, err := benchlab.New("switchboard-bench")
	if err != nil {
		return err
	}
	defer l.Close()
	os.MkdirAll("/run/sshd", 0o755)

	for _, k := range []string{"device", "operator"} {
		if err := benchlab.Sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", k, "-f", l.Path(k)); err != nil {
			return err
		}
	}
	devPub, opPub := benchlab.Read(l.Path("device.pub")), benchlab.Read(l.Path("operator.pub"))
	ports := map[string]int{}
	for _, n := range []string{"target", "relay", "switchboard", "relayfwd"} {
		if ports[n], err = benchlab.FreePort(); err != nil {
			return err
		}
	}

	// The device's target sshd, reached the same way through both relays.
	os.WriteFile(l.Path("target_authorized_keys"), []byte(opPub+"\n"), 0o600)
	cfg, err := sshdConfig(l, "target", ports["target"], "")
	if err != nil {
		return err
	}
	if _, err := l.Start(nil, "/usr/sbin/sshd", "-D", "-e", "-f", cfg); err != nil {
		return err
	}
	// The OpenSSH relay: a stock sshd allowing forwarding, both keys as root.
	os.WriteFile(l.Path("relay_authorized_keys"), []byte(devPub+"\n"+opPub+"\n"), 0o600)
	cfg, err = sshdConfig(l, "relay", ports["relay"], "AllowTcpForwarding yes\nGatewayPorts no\n")
	if err != nil {
		return err
	}
	if _, err := l.Start(nil, "/usr/sbin/sshd", "-D", "-e", "-f", cfg); err != nil {
		return err
	}
	// switchboard.
	os.MkdirAll(l.Path("state"), 0o700)
	os.WriteFile(l.Path("state", "authorized_keys"), []byte(
		`access="listen",hostname="dev42" `+devPub+"\n"+`access="initiate" `+opPub+"\n"), 0o600)
	if _, err := l.Start(nil, sb, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", ports["switchboard"]),
		"--state-dir", l.Path("state"), "--log-level", "warn", "--mqtt", "off"); err != nil {
		return err
	}
	for _, n := range []string{"target", "relay", "switchboard"} {
		if err := benchlab.WaitPort(ports[n]); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}

	// Known hosts: both relays, and the target under the names each path uses.
	known := fmt.Sprintf("[127.0.0.1]:%d %s\n[127.0.0.1]:%d %s\ndev42 %s\n",
		ports["relay"], benchlab.Read(l.Path("relay_host.pub")),
		ports["switchboard"], benchlab.Read(l.Path("state", "ssh_host_ed25519_key.pub")),
		benchlab.Read(l.Path("target_host.pub")))
	os.WriteFile(l.Path("known_hosts"), []byte(known), 0o600)
	sshConfig := fmt.Sprintf(`Host sb
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
`, ports["switchboard"], ports["relay"], ports["relayfwd"], l.Path("operator"), l.Path("known_hosts"))
	os.WriteFile(l.Path("ssh_config"), []byte(sshConfig), 0o600)

	paths := []struct{ name, jump, host string }{
		{"switchboard", "sb", "dev42"},
		{"openssh-relay", "", "relayed-dev42"},
	}
	sshVersion, _ := exec.Command("ssh", "-V").CombinedOutput()
	fmt.Printf("machine: %d cores; %s", runtime.NumCPU(), sshVersion)
	fmt.Printf("every hop uses the named cipher (operator→relay, inner session, device→relay)\n\n")
	fmt.Printf("%-44s %14s %14s %8s\n", "measurement", "switchboard", "openssh-relay", "ratio")

	for _, cipher := range []string{"chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"} {
		links, err := dialDevice(l, ports, cipher)
		if err != nil {
			return err
		}
		var res [2]stats
		for i, p := range paths {
			res[i], err = measure(connects, func() (float64, error) {
				return timeIt(func() error { return ssh(l, p.jump, p.host, cipher, nil, "true") })
			})
			if err != nil {
				return fmt.Errorf("%s connect: %w", p.name, err)
			}
		}
		row(fmt.Sprintf("ssh -J … true, ms (%s)", short(cipher)), res, "ms", false)

		for i, p := range paths {
			res[i], err = measure(runs, func() (float64, error) {
				d, err := timeIt(func() error {
					return ssh(l, p.jump, p.host, cipher, io.LimitReader(zero{}, size), "cat > /dev/null")
				})
				return float64(size) / (1 << 20) / (d / 1e3), err // d is in ms
			})
			if err != nil {
				return fmt.Errorf("%s throughput: %w", p.name, err)
			}
		}
		row(fmt.Sprintf("%s up via ssh -J, MiB/s (%s)", human(size), short(cipher)), res, "MiB/s", true)
		for _, p := range links {
			benchlab.Stop(p)
		}
	}
	return nil
}

// dialDevice starts the device's two uplinks, both stock `ssh -R` with the
// cipher under test, and waits until each relay routes to the target.
func dialDevice(l *benchlab.Lab, ports map[string]int, cipher string) ([]*exec.Cmd, error) {
	args := []string{"-F", l.Path("ssh_config"), "-i", l.Path("device"), "-N",
		"-o", "ExitOnForwardFailure=yes", "-o", "Ciphers=" + cipher}
	sbLink, err := l.Start(nil, "ssh", append(args, "-R", fmt.Sprintf("22:localhost:%d", ports["target"]), "dev42@sb")...)
	if err != nil {
		return nil, err
	}
	relayLink, err := l.Start(nil, "ssh", append(args, "-R",
		fmt.Sprintf("127.0.0.1:%d:localhost:%d", ports["relayfwd"], ports["target"]), "relay")...)
	if err != nil {
		return nil, err
	}
	links := []*exec.Cmd{sbLink, relayLink}
	// Neither relay says when the forward is up to the client: probe both.
	deadline := time.Now().Add(10 * time.Second)
	for _, host := range []string{"dev42", "relayed-dev42"} {
		for {
			jump := []string{}
			if host == "dev42" {
				jump = []string{"-J", "sb"}
			}
			if exec.Command("ssh", append(append([]string{"-F", l.Path("ssh_config")}, jump...), host, "true")...).Run() == nil {
				break
			}
			if time.Now().After(deadline) {
				return links, fmt.Errorf("%s never became reachable", host)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return links, nil
}

func ssh(l *benchlab.Lab, jump, host, cipher string, stdin io.Reader, command string) error {
	args := []string{"-F", l.Path("ssh_config"), "-o", "Ciphers=" + cipher}
	if jump != "" {
		args = append(args, "-J", jump)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", append(args, host, command)...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ssh %s: %w: %s", strings.Join(cmd.Args[1:], " "), err, stderr.String())
	}
	return nil
}

type zero struct{}

func (zero) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// timeIt returns the wall time of fn in milliseconds.
func timeIt(fn func() error) (float64, error) {
	start := time.Now()
	err := fn()
	return float64(time.Since(start).Microseconds()) / 1e3, err
}

type stats struct{ median, lo, hi float64 }

func measure(n int, fn func() (float64, error)) (stats, error) {
	var xs []float64
	for range n {
		x, err := fn()
		if err != nil {
			return stats{}, err
		}
		xs = append(xs, x)
	}
	slices.Sort(xs)
	return stats{median: xs[len(xs)/2], lo: xs[0], hi: xs[len(xs)-1]}, nil
}

// row prints both medians with their spread and switchboard's ratio to the
// relay; higherBetter flips the ratio so that > 1 always means switchboard wins.
func row(name string, r [2]stats, unit string, higherBetter bool) {
	ratio := r[0].median / r[1].median
	better := "lower is better"
	if higherBetter {
		better = "higher is better"
	}
	fmt.Printf("%-44s %14s %14s %7.2fx  (%s; min–max %s / %s)\n", name,
		fmt.Sprintf("%.1f", r[0].median), fmt.Sprintf("%.1f", r[1].median), ratio, better,
		fmt.Sprintf("%.1f–%.1f", r[0].lo, r[0].hi), fmt.Sprintf("%.1f–%.1f %s", r[1].lo, r[1].hi, unit))
}

func short(cipher string) string { return strings.TrimSuffix(cipher, "@openssh.com") }

func human(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
