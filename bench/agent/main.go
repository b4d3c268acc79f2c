// Command agent measures the device agent: the real binary's idle memory and
// CPU, its reconnect time after the server is killed and restarted, and how
// the backoff spreads a fleet of N agents (in one process, real SSH
// connections) over the restart, as a histogram.
//
//	go run ./bench/agent -switchboard bin/switchboard [-devices 1000] [-idle 60s]
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
	"github.com/switchboard-dev/switchboard/internal/agent"
)

func main() {
	sb := flag.String("switchboard", "bin/switchboard", "switchboard binary")
	devices := flag.Int("devices", 1000, "agents in the fleet")
	idle := flag.Duration("idle", 60*time.Second, "how long to watch the idle agent")
	flag.Parse()
	if err := run(*sb, *devices, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "bench/agent:", err)
		os.Exit(1)
	}
}

type env struct {
	dir, sb, addr, stateDir string
	server                  *exec.Cmd
}

func (e *env) startServer() error {
	cmd := exec.Command(e.sb, "serve", "--listen", e.addr, "--state-dir", e.stateDir,
		"--log-level", "error", "--mqtt", "off", "--max-unauth", "4096", "--max-unauth-per-source", "4096")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.server = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", e.addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("server did not listen on %s", e.addr)
}

func (e *env) killServer() {
	if e.server != nil {
		e.server.Process.Kill()
		e.server.Wait()
		e.server = nil
	}
}

func run(sb string, devices int, idle time.Duration) error {
	sb, _ = filepath.Abs(sb)
	dir, err := os.MkdirTemp("", "switchboard-agent-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e := &env{dir: dir, sb: sb, addr: ln.Addr().String(), stateDir: filepath.Join(dir, "state")}
	ln.Close()
	defer e.killServer()

	// One fleet key: devices log in with their own names (user-name fallback).
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	identity := filepath.Join(dir, "id_ed25519")
	os.WriteFile(identity, pem.EncodeToMemory(block), 0o600)
	os.MkdirAll(e.stateDir, 0o700)
	os.WriteFile(filepath.Join(e.stateDir, "authorized_keys"),
		[]byte(`access="listen" `+string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), 0o600)
	if err := e.startServer(); err != nil {
		return err
	}
	pub, err := os.ReadFile(filepath.Join(e.stateDir, "ssh_host_ed25519_key.pub"))
	if err != nil {
		return err
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		return err
	}
	knownHostsPath := filepath.Join(dir, "known_hosts")
	os.WriteFile(knownHostsPath, []byte(knownhosts.Line([]string{knownhosts.Normalize(e.addr)}, hostKey)+"\n"), 0o600)
	target, err := net.Listen("tcp", "127.0.0.1:0") // a local service the forwards point at
	if err != nil {
		return err
	}
	defer target.Close()

	fmt.Printf("machine: %d cores; server %s\n\n", numCPU(), e.addr)
	if err := idleAgent(e, identity, knownHostsPath, target.Addr().String(), idle); err != nil {
		return err
	}
	return fleet(e, identity, knownHostsPath, target.Addr().String(), devices)
}

// idleAgent runs the real agent binary, lets it sit connected, and reads its
// RSS and CPU time from /proc; then kills and restarts the server and times
// how long the agent takes to register again.
func idleAgent(e *env, identity, knownHosts, target string, idle time.Duration) error {
	var stderr benchlab.Log
	cmd := exec.Command(e.sb, "agent", "--server", e.addr, "--name", "idle-agent", "--identity", identity,
		"--known-hosts", knownHosts, "--forward", "22:"+target)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	if err := benchlab.WaitFor(10*time.Second, func() bool { return stderr.Count("forward registered") >= 1 }); err != nil {
		return fmt.Errorf("idle agent never registered: %s", stderr.String())
	}
	settle := 5 * time.Second
	time.Sleep(settle) // let start-up work and the first GC finish before measuring
	cpu0 := benchlab.CPUTime(cmd.Process.Pid)
	time.Sleep(idle)
	cpu1 := benchlab.CPUTime(cmd.Process.Pid)
	rss, hwm := benchlab.Memory(cmd.Process.Pid)
	fmt.Printf("agent binary, idle and connected (keepalive every %s):\n", agent.DefaultKeepaliveInterval)
	fmt.Printf("  RSS %.1f MiB (peak %.1f MiB); CPU %v over %v (%.3f%% of one core)\n\n",
		float64(rss)/1024, float64(hwm)/1024, cpu1-cpu0, idle, 100*float64(cpu1-cpu0)/float64(idle))

	// Reconnect after SIGKILL and restart of the server, five times.
	var times []time.Duration
	for range 5 {
		before := stderr.Count("forward registered")
		e.killServer()
		if err := benchlab.WaitFor(10*time.Second, func() bool { return stderr.Count("waiting") > 0 }); err != nil {
			return err
		}
		if err := e.startServer(); err != nil {
			return err
		}
		start := time.Now()
		if err := benchlab.WaitFor(30*time.Second, func() bool { return stderr.Count("forward registered") > before }); err != nil {
			return fmt.Errorf("agent did not come back: %s", stderr.String())
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	fmt.Printf("agent binary, back after the server was SIGKILLed and restarted (5 runs, backoff min %s):\n",
		agent.DefaultBackoffMin)
	fmt.Printf("  median %v, min %v, max %v (from the restarted server listening to the device registered)\n\n",
		times[2].Round(time.Millisecond), times[0].Round(time.Millisecond), times[4].Round(time.Millisecond))
	return nil
}

// fleet runs n agents in this process, kills and restarts the server, and
// prints when each one registered again.
func fleet(e *env, identity, knownHosts, target string, n int) error {
	var (
		mu         sync.Mutex
		registered = map[string]time.Time{}
	)
	handler := &countingHandler{onRegistered: func(name string) {
		mu.Lock()
		registered[name] = time.Now()
		mu.Unlock()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	f, _ := agent.ParseForward("22:" + target)
	for i := range n {
		name := fmt.Sprintf("fleet-%04d", i)
		a, err := agent.New(agent.Config{
			Server: e.addr, Name: name, Identity: identity, KnownHosts: knownHosts,
			Forwards: []agent.Forward{f},
		}, slog.New(handler.with(name)))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	if err := benchlab.WaitFor(120*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(registered) == n }); err != nil {
		return fmt.Errorf("only %d of %d agents registered at first", len(registered), n)
	}
	e.killServer()
	mu.Lock()
	clear(registered)
	mu.Unlock()
	restart := time.Now()
	if err := e.startServer(); err != nil {
		return err
	}
	if err := benchlab.WaitFor(120*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(registered) == n }); err != nil {
		return fmt.Errorf("only %d of %d agents came back", len(registered), n)
	}
	var back []time.Duration
	for _, t := range registered {
		back = append(back, t.Sub(restart))
	}
	slices.Sort(back)
	fmt.Printf("%d agents (default backoff: min %s, max %s, full jitter), server SIGKILLed and restarted:\n",
		n, agent.DefaultBackoffMin, agent.DefaultBackoffMax)
	fmt.Printf("  all back %v after the restart began; median %v, p90 %v, p99 %v\n",
		back[n-1].Round(time.Millisecond), back[n/2].Round(time.Millisecond),
		back[n*9/10].Round(time.Millisecond), back[n*99/100].Round(time.Millisecond))
	fmt.Println("  re-registrations per 250 ms after the restart began:")
	bucket := 250 * time.Millisecond
	counts := map[int]int{}
	last := 0
	for _, d := range back {
		b := int(d / bucket)
		counts[b]++
		last = max(last, b)
	}
	for b := 0; b <= last; b++ {
		fmt.Printf("  %5.2fs %5d %s\n", (time.Duration(b) * bucket).Seconds(), counts[b], strings.Repeat("#", (counts[b]+4)/5))
	}
	return nil
}

// countingHandler is a slog handler that reports "forward registered" per
// agent and drops everything else.
type countingHandler struct {
	name         string
	onRegistered func(string)
}

func (h *countingHandler) with(name string) *countingHandler {
	return &countingHandler{name: name, onRegistered: h.onRegistered}
}
func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "forward registered" {
		h.onRegistered(h.name)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func numCPU() int { return strings.Count(benchlab.Read("/proc/cpuinfo"), "processor\t:") }
