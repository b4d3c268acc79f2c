// Command ondemand measures on-demand devices on this machine: the extra
// time of the first `ssh -J … true` to an asleep device over one that is
// connected (real server, agent and OpenSSH binaries, embedded broker), and
// the embedded broker's memory per idle connected agent, with N agents
// (real TLS MQTT sessions from a separate load-generator process) held
// against a real `switchboard serve`.
//
//	go run ./bench/ondemand -switchboard bin/switchboard [-runs 10] [-agents 10000]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchboard-dev/switchboard/internal/mqttc"
	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/wake"
)

func main() {
	sb := flag.String("switchboard", "bin/switchboard", "switchboard binary")
	runs := flag.Int("runs", 10, "asleep/connected pairs of ssh -J … true")
	agents := flag.Int("agents", 10000, "idle MQTT agents for the memory measurement")
	flag.Parse()
	var err error
	if os.Getenv("SWITCHBOARD_BENCH_LOADGEN") != "" {
		err = loadgen()
	} else {
		err = run(*sb, *runs, *agents)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/ondemand:", err)
		os.Exit(1)
	}
}

type lab struct {
	dir   string
	procs []*exec.Cmd
}

func (l *lab) path(p ...string) string { return filepath.Join(append([]string{l.dir}, p...)...) }

func (l *lab) start(stderr *syncBuffer, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	l.procs = append(l.procs, cmd)
	return cmd, nil
}

func (l *lab) close() {
	for _, p := range l.procs {
		syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
		p.Wait()
	}
	os.RemoveAll(l.dir)
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func run(sb string, runs, agents int) error {
	sb, _ = filepath.Abs(sb)
	dir, err := os.MkdirTemp("", "switchboard-ondemand-bench")
	if err != nil {
		return err
	}
	l := &lab{dir: dir}
	defer l.close()
	os.MkdirAll("/run/sshd", 0o755)
	fmt.Printf("machine: %d cores\n\n", strings.Count(read("/proc/cpuinfo"), "processor\t:"))
	if err := wakeTime(l, sb, runs); err != nil {
		return err
	}
	return brokerMemory(l, sb, agents)
}

// wakeTime runs a server, an on-demand agent in front of a real sshd, and
// times `ssh -J sb dev42 true` alternately asleep and still connected.
func wakeTime(l *lab, sb string, runs int) error {
	sshPort, mqttPort, targetPort := freePort(), freePort(), freePort()
	addr := fmt.Sprintf("127.0.0.1:%d", sshPort)
	state := l.path("state")
	var serverLog, agentLog syncBuffer
	if _, err := l.start(&serverLog, sb, "serve", "--listen", addr, "--state-dir", state, "--public-addr", addr,
		"--mqtt-listen", fmt.Sprintf("127.0.0.1:%d", mqttPort), "--log-level", "warn"); err != nil {
		return err
	}
	if err := waitFor(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(state, "public-addr")); return err == nil }); err != nil {
		return fmt.Errorf("server did not start: %s", serverLog.String())
	}
	if err := waitPort(sshPort); err != nil {
		return err
	}
	if err := sh(sb, "enroll", "dev42", "--role", "device", "--on-demand", "--out", l.path("dev42"), "--state-dir", state,
		"--device-dir", l.path("dev42"), "--mqtt-url", fmt.Sprintf("mqtts://127.0.0.1:%d", mqttPort),
		"--forward", fmt.Sprintf("22:127.0.0.1:%d", targetPort)); err != nil {
		return err
	}
	if err := sh(sb, "enroll", "alice", "--role", "operator", "--out", l.path("alice"), "--state-dir", state); err != nil {
		return err
	}
	// The device's sshd, which lets alice in.
	if err := sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", l.path("target_host")); err != nil {
		return err
	}
	os.WriteFile(l.path("target_keys"), []byte(read(l.path("alice", "id_ed25519.pub"))), 0o600)
	os.WriteFile(l.path("sshd_config"), []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
`, targetPort, l.path("target_host"), l.path("target_keys"))), 0o600)
	var sshdLog syncBuffer
	if _, err := l.start(&sshdLog, "/usr/sbin/sshd", "-D", "-e", "-f", l.path("sshd_config")); err != nil {
		return err
	}
	idle := time.Second
	if _, err := l.start(&agentLog, sb, "agent", "--config", l.path("dev42", "agent.yaml"), "--idle-timeout", idle.String()); err != nil {
		return err
	}
	if err := waitFor(10*time.Second, func() bool { return agentLog.count("asleep") >= 1 }); err != nil {
		return fmt.Errorf("agent never went to sleep: %s", agentLog.String())
	}
	known := read(l.path("alice", "known_hosts")) + "\ndev42 " + read(l.path("target_host.pub")) + "\n"
	os.WriteFile(l.path("known_hosts"), []byte(known), 0o600)
	os.WriteFile(l.path("ssh_config"), []byte(fmt.Sprintf(`Host sb
  HostName 127.0.0.1
  Port %d
Host *
  User root
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  StrictHostKeyChecking yes
  BatchMode yes
`, sshPort, l.path("alice", "id_ed25519"), l.path("known_hosts"))), 0o600)

	ssh := func() (time.Duration, error) {
		start := time.Now()
		out, err := exec.Command("ssh", "-F", l.path("ssh_config"), "-J", "sb", "dev42", "true").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("ssh -J: %w: %s", err, out)
		}
		return time.Since(start), nil
	}
	var asleep, connected []time.Duration
	for range runs {
		sleeps := agentLog.count("asleep")
		d, err := ssh() // asleep: the server wakes it
		if err != nil {
			return err
		}
		asleep = append(asleep, d)
		if d, err = ssh(); err != nil { // still connected: within the idle timeout
			return err
		}
		connected = append(connected, d)
		// Wait for it to hang up and go back to sleep before the next pair.
		if err := waitFor(3*idle+5*time.Second, func() bool { return agentLog.count("asleep") > sleeps }); err != nil {
			return fmt.Errorf("agent did not go back to sleep: %s", agentLog.String())
		}
	}
	var extra []time.Duration
	for i := range asleep {
		extra = append(extra, asleep[i]-connected[i])
	}
	for _, s := range [][]time.Duration{asleep, connected, extra} {
		slices.Sort(s)
	}
	med := func(s []time.Duration) time.Duration { return s[len(s)/2].Round(time.Millisecond) }
	fmt.Printf("ssh -J sb dev42 true, on-demand device, embedded broker, %d runs each:\n", runs)
	fmt.Printf("  asleep (woken):      median %v (min %v, max %v)\n", med(asleep), asleep[0].Round(time.Millisecond), asleep[len(asleep)-1].Round(time.Millisecond))
	fmt.Printf("  connected:           median %v (min %v, max %v)\n", med(connected), connected[0].Round(time.Millisecond), connected[len(connected)-1].Round(time.Millisecond))
	fmt.Printf("  extra time of a wake: median %v (min %v, max %v); target ≤ 1.5 s\n\n", med(extra), extra[0].Round(time.Millisecond), extra[len(extra)-1].Round(time.Millisecond))
	return nil
}

// brokerMemory starts a fresh server, then a load generator process that
// holds n agents' MQTT sessions (each with its own certificate, subscribed
// to its wake topic, its state retained), and reads the server's RSS.
func brokerMemory(l *lab, sb string, n int) error {
	sshPort, mqttPort := freePort(), freePort()
	state := l.path("mem-state")
	os.MkdirAll(state, 0o700)
	// The broker admits only enrolled devices: one authorized_keys line each
	// (one shared key is enough for that check).
	if err := sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", l.path("fleet")); err != nil {
		return err
	}
	pub := strings.TrimSpace(read(l.path("fleet.pub")))
	var ak strings.Builder
	for i := range n {
		fmt.Fprintf(&ak, "access=\"listen\",hostname=\"od%05d\" %s\n", i, pub)
	}
	os.WriteFile(filepath.Join(state, "authorized_keys"), []byte(ak.String()), 0o600)
	var serverLog syncBuffer
	server, err := l.start(&serverLog, sb, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", sshPort), "--state-dir", state,
		"--public-addr", fmt.Sprintf("127.0.0.1:%d", sshPort), "--mqtt-listen", fmt.Sprintf("127.0.0.1:%d", mqttPort), "--log-level", "error")
	if err != nil {
		return err
	}
	if err := waitPort(mqttPort); err != nil {
		return fmt.Errorf("broker: %w: %s", err, serverLog.String())
	}
	time.Sleep(2 * time.Second) // settle start-up allocations before the baseline
	rss0, _ := memory(server.Process.Pid)

	var genOut syncBuffer
	gen := exec.Command(os.Args[0], os.Args[1:]...)
	gen.Env = append(os.Environ(), "SWITCHBOARD_BENCH_LOADGEN=1",
		"LG_STATE="+state, "LG_URL="+fmt.Sprintf("mqtts://127.0.0.1:%d", mqttPort), "LG_N="+strconv.Itoa(n))
	gen.Stdout, gen.Stderr = &genOut, &genOut
	gen.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := gen.Start(); err != nil {
		return err
	}
	defer func() { syscall.Kill(-gen.Process.Pid, syscall.SIGTERM); gen.Wait() }()
	if err := waitFor(10*time.Minute, func() bool { return strings.Contains(genOut.String(), "ready") }); err != nil {
		return fmt.Errorf("load generator: %s", genOut.String())
	}
	connectTime := time.Since(start)
	time.Sleep(10 * time.Second) // idle: only keepalives
	rss1, hwm := memory(server.Process.Pid)
	per := float64(rss1-rss0) / float64(n)
	fmt.Printf("embedded broker with %d idle agents connected (mutual TLS, each subscribed to its wake topic,\n", n)
	fmt.Printf("its state retained), in the switchboard server process:\n")
	fmt.Printf("  server RSS %.1f MiB before, %.1f MiB with the agents (peak %.1f MiB): %.1f KiB per agent\n",
		float64(rss0)/1024, float64(rss1)/1024, float64(hwm)/1024, per)
	fmt.Printf("  %d agents connected in %v\n", n, connectTime.Round(100*time.Millisecond))
	return nil
}

// loadgen is the load generator process: n MQTT clients, as on-demand agents
// would be, each with its own certificate from the state dir's CA.
func loadgen() error {
	n, _ := strconv.Atoi(os.Getenv("LG_N"))
	ca, _, err := pki.LoadOrCreateCA(os.Getenv("LG_STATE"))
	if err != nil {
		return err
	}
	topics := wake.Topics{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		wg     sync.WaitGroup
		failed atomic.Int32
		sem    = make(chan struct{}, 64) // concurrent handshakes
	)
	clients := make([]*mqttc.Client, n)
	for i := range n {
		name := fmt.Sprintf("od%05d", i)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			certPEM, keyPEM, err := ca.Issue(name, pki.ClientCert, nil, time.Hour)
			if err != nil {
				failed.Add(1)
				return
			}
			tc, err := pki.ClientTLS(ca.CertPEM(), certPEM, keyPEM, "127.0.0.1")
			if err != nil {
				failed.Add(1)
				return
			}
			dctx, dcancel := context.WithTimeout(ctx, time.Minute)
			defer dcancel()
			c, err := mqttc.Dial(dctx, mqttc.Options{URL: os.Getenv("LG_URL"), ClientID: name, TLS: tc,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				failed.Add(1)
				return
			}
			if _, err := c.Subscribe(dctx, topics.Wake(name), func([]byte, bool) {}); err != nil {
				failed.Add(1)
				return
			}
			st := fmt.Sprintf(`{"v":1,"state":"asleep","since":"%s","agent":"bench"}`, time.Now().UTC().Format(time.RFC3339))
			if err := c.Publish(dctx, topics.State(name), []byte(st), true); err != nil {
				failed.Add(1)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d agents failed to connect", f, n)
	}
	fmt.Println("ready")
	<-make(chan struct{}) // hold the sessions until killed
	return nil
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}
func (b *syncBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }
func (b *syncBuffer) count(msg string) int {
	return strings.Count(b.String(), `"msg":"`+msg+`"`)
}

func read(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func waitPort(port int) error {
	return waitFor(10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// memory returns VmRSS and VmHWM of pid in KiB.
func memory(pid int) (rss, hwm int) {
	for line := range strings.SplitSeq(read(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.Atoi(f[1])
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			hwm, _ = strconv.Atoi(f[1])
		}
	}
	return rss, hwm
}
