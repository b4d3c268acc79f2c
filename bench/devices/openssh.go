package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

// opensshDevices holds o.openssh devices against a stock sshd used as the
// relay, each with a real remote forward (sshd listens on a port per
// device), and compares its memory per connection with switchboard's RSS
// per device at the nearest count (sbPerDevice).
func opensshDevices(l *benchlab.Lab, o options, f fleet, nextSrc *int, sbPerDevice map[int]float64, res *benchlab.Results) error {
	n := o.openssh
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege-separation directory
		return err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	hostSigner, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return err
	}
	if err := os.WriteFile(l.Path("relay_host"), pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(l.Path("relay_authorized_keys"), ssh.MarshalAuthorizedKey(f.pub), 0o600); err != nil {
		return err
	}
	port, err := benchlab.FreePort()
	if err != nil {
		return err
	}
	// ClientAliveInterval matches switchboard's keepalive; MaxStartups lets
	// the load generator's handshakes in flight through (sshd drops new
	// unauthenticated connections above it).
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
AllowTcpForwarding yes
GatewayPorts no
ClientAliveInterval 15
MaxStartups 1000:30:1000
`, port, l.Path("relay_host"), l.Path("relay_authorized_keys"))
	if err := os.WriteFile(l.Path("relay_config"), []byte(cfg), 0o600); err != nil {
		return err
	}
	sshdLog, err := os.Create(l.Path("sshd.log"))
	if err != nil {
		return err
	}
	defer sshdLog.Close()
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", l.Path("relay_config"))
	cmd.Stderr = sshdLog
	if err := l.StartCmd(cmd); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	// sshd's per-connection processes leave its process group (setsid):
	// end them while they can still be found as its descendants, before
	// the lab ends the listener.
	defer reap(pid)
	if err := benchlab.WaitPort(port); err != nil {
		return fmt.Errorf("sshd: %w: %s", err, benchlab.Read(l.Path("sshd.log")))
	}
	// WaitPort's probe made sshd fork once; wait for that child to go.
	time.Sleep(500 * time.Millisecond)
	if err := benchlab.WaitFor(10*time.Second, func() bool { return len(benchlab.Descendants(pid)) == 0 }); err != nil {
		return fmt.Errorf("sshd: a probe connection's process did not exit")
	}
	version, _ := exec.Command("/usr/sbin/sshd", "-V").CombinedOutput()
	pss0, rss0, procs0 := tree(pid)

	gens := &loadgens{
		t: target{addr: fmt.Sprintf("127.0.0.1:%d", port), hostKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostSigner.PublicKey()))),
			user: "root", fwd: "127.0.0.1:0"},
		key: f.path, inflight: o.inflight, next: nextSrc,
	}
	defer gens.stop()
	st, err := gens.add(0, n)
	if err != nil {
		return err
	}
	time.Sleep(o.settle)
	pss1, rss1, procs1 := tree(pid)
	div := float64(max(st.connected, 1))
	pssPer, rssPer := float64(pss1-pss0)/div, float64(rss1-rss0)/div
	rate := float64(st.connected) / st.took.Seconds()

	// switchboard's figure at the count nearest n, from this run.
	near, sbPer := 0, 0.0
	for c, v := range sbPerDevice {
		if near == 0 || math.Abs(float64(c-n)) < math.Abs(float64(near-n)) || (c < near && math.Abs(float64(c-n)) == math.Abs(float64(near-n))) {
			near, sbPer = c, v
		}
	}
	fmt.Printf("\nOpenSSH relay: stock %s on 127.0.0.1, %d devices logged in as root with a key, each with\n",
		strings.TrimSpace(firstLine(string(version))), n)
	fmt.Printf("  tcpip-forward 127.0.0.1:0 (a real listening port each, as ssh -R on a relay), ClientAliveInterval 15\n")
	fmt.Printf("  connected: %d of %d in %.1f s (%.0f devices/s, %d handshakes in flight)\n", st.connected, n, st.took.Seconds(), rate, o.inflight)
	fmt.Printf("  before: %d sshd process, PSS %.1f MiB, RSS %.1f MiB\n", procs0, float64(pss0)/1024, float64(rss0)/1024)
	fmt.Printf("  after:  %d sshd processes, PSS %.1f MiB, RSS %.1f MiB\n", procs1, float64(pss1)/1024, float64(rss1)/1024)
	fmt.Printf("  per connection: PSS %.1f KiB, RSS %.1f KiB (summed over its processes; kernel memory not counted)\n", pssPer, rssPer)
	if near > 0 {
		fmt.Printf("  switchboard at %d devices: RSS %.1f KiB per device; the OpenSSH relay uses %.0f× as much (PSS)\n",
			near, sbPer, pssPer/sbPer)
	}

	for i := range res.Results {
		if res.Results[i].ID == "handshake.rate" {
			res.Results[i].OpenSSH = []float64{round(rate)}
			res.Results[i].Note += fmt.Sprintf("; OpenSSH: %d connections in %.1f s, 1 load generator × %d handshakes in flight",
				st.connected, st.took.Seconds(), o.inflight)
		}
	}
	note := fmt.Sprintf("OpenSSH: PSS summed over its sshd processes per connection (RSS: %.0f KiB); %d sshd processes for %d connections (logged in as root, sshd forks no post-auth child); switchboard: RSS per device at %d devices",
		rssPer, procs1, st.connected, near)
	if st.connected < n {
		note += fmt.Sprintf("; only %d of %d OpenSSH connections succeeded", st.connected, n)
	}
	res.Add(benchlab.Result{ID: "memory.compare", Name: "memory per idle connected device: switchboard vs an OpenSSH relay",
		Unit: "KiB", Better: "lower", Switchboard: []float64{round(sbPer)}, OpenSSH: []float64{round(pssPer)}, X: float64(n), Note: note})
	if st.connected < n {
		return fmt.Errorf("OpenSSH relay: only %d of %d devices connected (first error: %s)", st.connected, n, st.firstErr)
	}
	return nil
}

// tree sums PSS and RSS (KiB) over pid and its descendants.
func tree(pid int) (pss, rss, procs int) {
	for _, p := range append([]int{pid}, benchlab.Descendants(pid)...) {
		ps, rs := benchlab.Rollup(p)
		pss += ps
		rss += rs
		procs++
	}
	return pss, rss, procs
}

// reap waits a little for pid's descendants to exit (their clients have
// hung up), then kills the rest.
func reap(pid int) {
	if benchlab.WaitFor(5*time.Second, func() bool { return len(benchlab.Descendants(pid)) == 0 }) == nil {
		return
	}
	for _, p := range benchlab.Descendants(pid) {
		syscall.Kill(p, syscall.SIGKILL)
	}
	benchlab.WaitFor(5*time.Second, func() bool { return len(benchlab.Descendants(pid)) == 0 })
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
