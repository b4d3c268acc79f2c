// Command agent measures the device agent: the real binary's idle memory and
// CPU, its reconnect time after the server is killed and restarted, and how
// the backoff spreads a fleet of N agents (in one process, real SSH
// connections) over the restart, as a histogram.
//
//	go run ./bench/agent -switchboard bin/switchboard [-devices 1000,10000] [-idle 30s] [-json FILE]
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
	"github.com/switchboard-dev/switchboard/internal/agent"
)

// startWindow is how many fleet agents may be starting (dialled, not yet
// registered) at once when the fleet first comes up, so that each gets in
// at its first attempt: its backoff is then where a long-connected
// device's is (reset), and the restart measures what it should.
const startWindow = 128

type options struct {
	sb        string
	devices   []int
	idle      time.Duration
	maxUnauth int
	json      string
}

func main() {
	var o options
	flag.StringVar(&o.sb, "switchboard", "bin/switchboard", "switchboard binary")
	fleets := flag.String("devices", "1000", "agents in the fleet; a comma list runs one restart per fleet size, in order")
	flag.DurationVar(&o.idle, "idle", 30*time.Second, "how long to watch the idle agent")
	flag.IntVar(&o.maxUnauth, "max-unauth", 512, "the server's --max-unauth (512 is its default); the per-source limit is lifted, since all agents here share one address")
	flag.StringVar(&o.json, "json", "", "also write the results to this file (benchlab JSON)")
	flag.Parse()
	for _, f := range strings.Split(*fleets, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench/agent: -devices: bad fleet size %q\n", f)
			os.Exit(2)
		}
		o.devices = append(o.devices, n)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/agent:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.idle <= 0 || o.maxUnauth < 1 {
		return fmt.Errorf("-idle and -max-unauth must be positive")
	}
	res := &benchlab.Results{Program: "bench/agent", Command: benchlab.CommandLine("bench/agent")}
	err := measure(o, res)
	if werr := res.WriteJSON(o.json); werr != nil && err == nil {
		err = werr
	}
	return err
}

type env struct {
	sb, addr, stateDir string
	maxUnauth          int
	server             *exec.Cmd
}

func (e *env) startServer() error {
	cmd := exec.Command(e.sb, "serve", "--listen", e.addr, "--state-dir", e.stateDir,
		"--log-level", "error", "--mqtt", "off",
		"--max-unauth", fmt.Sprint(e.maxUnauth), "--max-unauth-per-source", "1000000")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.server = cmd
	err := benchlab.WaitFor(10*time.Second, func() bool {
		c, err := net.Dial("tcp", e.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err != nil {
		return fmt.Errorf("server did not listen on %s", e.addr)
	}
	return nil
}

func (e *env) killServer() {
	if e.server != nil {
		e.server.Process.Kill()
		e.server.Wait()
		e.server = nil
	}
}

func measure(o options, res *benchlab.Results) error {
	sb, _ := filepath.Abs(o.sb)
	dir, err := os.MkdirTemp("", "switchboard-agent-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	port, err := benchlab.FreePort()
	if err != nil {
		return err
	}
	e := &env{sb: sb, addr: fmt.Sprintf("127.0.0.1:%d", port), stateDir: filepath.Join(dir, "state"), maxUnauth: o.maxUnauth}
	defer e.killServer()

	// One fleet key: devices log in with their own names (user-name fallback).
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	identity := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(identity, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.stateDir, "authorized_keys"),
		[]byte(`access="listen" `+string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), 0o600); err != nil {
		return err
	}
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
	if err := os.WriteFile(knownHostsPath, []byte(knownhosts.Line([]string{knownhosts.Normalize(e.addr)}, hostKey)+"\n"), 0o600); err != nil {
		return err
	}
	target, err := net.Listen("tcp", "127.0.0.1:0") // a local service the forwards point at
	if err != nil {
		return err
	}
	defer target.Close()

	fmt.Printf("machine: %d cores; server %s (--max-unauth %d)\n\n", numCPU(), e.addr, o.maxUnauth)
	if err := idleAgent(e, identity, knownHostsPath, target.Addr().String(), o.idle, res); err != nil {
		return err
	}
	for i, n := range o.devices {
		if i > 0 {
			fmt.Println()
		}
		if err := fleet(e, identity, knownHostsPath, target.Addr().String(), n, res); err != nil {
			return err
		}
	}
	return nil
}

// idleAgent runs the real agent binary, lets it sit connected, and reads its
// RSS and CPU time from /proc; then kills and restarts the server and times
// how long the agent takes to register again.
func idleAgent(e *env, identity, knownHosts, target string, idle time.Duration, res *benchlab.Results) error {
	var stderr benchlab.Log
	cmd := exec.Command(e.sb, "agent", "--server", e.addr, "--name", "idle-agent", "--identity", identity,
		"--known-hosts", knownHosts, "--forward", "22:"+target)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	if err := benchlab.WaitFor(10*time.Second, func() bool { return stderr.Count("forward registered") >= 1 }); err != nil {
		return fmt.Errorf("idle agent never registered: %s", stderr.String())
	}
	time.Sleep(3 * time.Second) // let start-up work and the first GC finish before measuring
	cpu0 := benchlab.CPUTime(cmd.Process.Pid)
	time.Sleep(idle)
	cpu1 := benchlab.CPUTime(cmd.Process.Pid)
	rss, hwm := benchlab.Memory(cmd.Process.Pid)
	anon := benchlab.Anonymous(cmd.Process.Pid)
	binary := 0
	if fi, err := os.Stat(e.sb); err == nil {
		binary = int(fi.Size() / 1024)
	}
	if rss == 0 {
		return fmt.Errorf("idle agent exited: %s", stderr.String())
	}
	pct := 100 * float64(cpu1-cpu0) / float64(idle)
	fmt.Printf("agent binary, idle and connected (keepalive every %s):\n", agent.DefaultKeepaliveInterval)
	fmt.Printf("  RSS %.1f MiB (peak %.1f MiB); CPU %v over %v (%.3f%% of one core)\n",
		float64(rss)/1024, float64(hwm)/1024, cpu1-cpu0, idle, pct)
	// The rest of RSS is the binary's pages mapped from the page cache: clean,
	// shared with every other process running it, and dropped by the kernel
	// under memory pressure. Recent kernels map most of a binary's pages.
	fmt.Printf("  of which anonymous (heap, stacks, runtime) %.1f MiB; the rest is the %.1f MiB binary's pages mapped from the page cache\n\n",
		float64(anon)/1024, float64(binary)/1024)
	res.Add(benchlab.Result{ID: "agent.idle_rss", Name: "agent binary's RSS, idle and connected", Unit: "MiB", Better: "lower",
		Switchboard: []float64{round(float64(rss) / 1024)},
		Note: fmt.Sprintf("peak %.1f MiB; anonymous memory (heap, stacks, runtime) %.1f MiB, the rest is the %.1f MiB binary mapped from the page cache",
			float64(hwm)/1024, float64(anon)/1024, float64(binary)/1024)})
	res.Add(benchlab.Result{ID: "agent.idle_anon", Name: "agent binary's anonymous memory, idle and connected", Unit: "MiB", Better: "lower",
		Switchboard: []float64{round(float64(anon) / 1024)}})
	res.Add(benchlab.Result{ID: "agent.idle_cpu", Name: "agent binary's CPU, idle and connected", Unit: "% of a core", Better: "lower",
		Switchboard: []float64{round(pct)},
		Note:        fmt.Sprintf("%v of CPU time over %v (/proc, 10 ms ticks); keepalive every %s", cpu1-cpu0, idle, agent.DefaultKeepaliveInterval)})

	// Reconnect after SIGKILL and restart of the server, five times.
	var times []time.Duration
	for range 5 {
		before, waiting := stderr.Count("forward registered"), stderr.Count("waiting")
		e.killServer()
		if err := benchlab.WaitFor(10*time.Second, func() bool { return stderr.Count("waiting") > waiting }); err != nil {
			return fmt.Errorf("agent did not notice the server going: %s", stderr.String())
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
	var samples []float64
	for _, t := range times {
		samples = append(samples, round(t.Seconds()))
	}
	slices.Sort(times)
	fmt.Printf("agent binary, back after the server was SIGKILLed and restarted (5 runs, backoff min %s):\n",
		agent.DefaultBackoffMin)
	fmt.Printf("  median %v, min %v, max %v (from the restarted server listening to the device registered)\n\n",
		times[2].Round(time.Millisecond), times[0].Round(time.Millisecond), times[4].Round(time.Millisecond))
	res.Add(benchlab.Result{ID: "agent.reconnect", Name: "agent binary back after a server restart", Unit: "s", Better: "lower",
		Switchboard: samples, Note: fmt.Sprintf("from the restarted server listening to the forward registered; backoff min %s, full jitter",
			agent.DefaultBackoffMin)})
	return nil
}

// fleet runs n agents in this process, kills and restarts the server, and
// prints when each one registered again.
func fleet(e *env, identity, knownHosts, target string, n int, res *benchlab.Results) error {
	var (
		mu         sync.Mutex
		registered = map[string]time.Time{}
		retried    = map[string]bool{} // logged "waiting" before the restart
		restarting bool
	)
	started := make(chan struct{}, startWindow) // agents starting, not yet registered
	handler := &fleetHandler{on: func(name, msg string) {
		mu.Lock()
		defer mu.Unlock()
		switch msg {
		case "forward registered":
			if _, ok := registered[name]; !ok {
				registered[name] = time.Now()
				if !restarting {
					<-started
				}
			}
		case "waiting":
			if !restarting {
				retried[name] = true
			}
		}
	}}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(registered) }

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	f, err := agent.ParseForward("22:" + target)
	if err != nil {
		return err
	}
	t0 := time.Now()
	deadline := t0.Add(2 * time.Minute)
	for i := range n {
		name := fmt.Sprintf("fleet-%05d", i)
		a, err := agent.New(agent.Config{
			Server: e.addr, Name: name, Identity: identity, KnownHosts: knownHosts,
			Forwards: []agent.Forward{f},
		}, slog.New(handler.with(name)))
		if err != nil {
			return err
		}
		select {
		case started <- struct{}{}:
		case <-time.After(time.Until(deadline)):
			return fmt.Errorf("only %d of %d agents registered at first (%d started) in 2 minutes", count(), n, i)
		}
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	if err := benchlab.WaitFor(time.Until(deadline), func() bool { return count() == n }); err != nil {
		return fmt.Errorf("only %d of %d agents registered at first in 2 minutes", count(), n)
	}
	up := time.Since(t0)
	mu.Lock()
	firstTry := n - len(retried)
	restarting = true
	clear(registered)
	mu.Unlock()
	fmt.Printf("%d agents up in %v (at most %d starting at once); %d of them at their first attempt\n",
		n, up.Round(100*time.Millisecond), startWindow, firstTry)

	e.killServer()
	restart := time.Now()
	if err := e.startServer(); err != nil {
		return err
	}
	if err := benchlab.WaitFor(2*time.Minute, func() bool { return count() == n }); err != nil {
		return fmt.Errorf("only %d of %d agents came back within 2 minutes of the restart", count(), n)
	}
	var back []time.Duration
	mu.Lock()
	for _, t := range registered {
		back = append(back, t.Sub(restart))
	}
	mu.Unlock()
	slices.Sort(back)
	pct := func(p float64) time.Duration { return back[max(0, int(math.Ceil(p*float64(n)))-1)] }
	fmt.Printf("%d agents (default backoff: min %s, max %s, full jitter), server SIGKILLed and restarted:\n",
		n, agent.DefaultBackoffMin, agent.DefaultBackoffMax)
	fmt.Printf("  all back %v after the restart began; median %v, p90 %v, p99 %v\n",
		back[n-1].Round(time.Millisecond), pct(0.5).Round(time.Millisecond),
		pct(0.9).Round(time.Millisecond), pct(0.99).Round(time.Millisecond))
	note := fmt.Sprintf("%d agents in one process, real SSH connections, against switchboard serve --max-unauth %d; backoff min %s, max %s, full jitter",
		n, e.maxUnauth, agent.DefaultBackoffMin, agent.DefaultBackoffMax)
	if firstTry < n {
		note += fmt.Sprintf("; %d agents had already retried before the restart (their backoff was not at its minimum)", n-firstTry)
	}
	x := float64(n)
	res.Add(benchlab.Result{ID: "fleet.all_back", Name: "all devices back after a server restart", Unit: "s", Better: "lower",
		Switchboard: []float64{round(back[n-1].Seconds())}, X: x, Note: note})
	res.Add(benchlab.Result{ID: "fleet.p50", Name: "median device back after a server restart", Unit: "s", Better: "lower",
		Switchboard: []float64{round(pct(0.5).Seconds())}, X: x, Note: note})
	res.Add(benchlab.Result{ID: "fleet.p99", Name: "99th percentile device back after a server restart", Unit: "s", Better: "lower",
		Switchboard: []float64{round(pct(0.99).Seconds())}, X: x, Note: note})

	bucket := 250 * time.Millisecond
	if back[n-1] > 20*time.Second {
		bucket = time.Second
	}
	fmt.Printf("  re-registrations per %v after the restart began:\n", bucket)
	counts := map[int]int{}
	last := 0
	for _, d := range back {
		b := int(d / bucket)
		counts[b]++
		last = max(last, b)
	}
	scale := max(1, (slices.Max(mapValues(counts))+99)/100) // at most 100 marks a line
	for b := 0; b <= last; b++ {
		fmt.Printf("  %6.2fs %5d %s\n", (time.Duration(b) * bucket).Seconds(), counts[b], strings.Repeat("#", (counts[b]+scale-1)/scale))
	}
	if scale > 1 {
		fmt.Printf("  (# = %d agents)\n", scale)
	}
	return nil
}

func mapValues(m map[int]int) []int {
	var v []int
	for _, c := range m {
		v = append(v, c)
	}
	return v
}

// fleetHandler is a slog handler that reports each agent's messages by
// name and drops their attributes.
type fleetHandler struct {
	name string
	on   func(name, msg string)
}

func (h *fleetHandler) with(name string) *fleetHandler { return &fleetHandler{name: name, on: h.on} }
func (h *fleetHandler) Enabled(context.Context, slog.Level) bool {
	return true
}
func (h *fleetHandler) Handle(_ context.Context, r slog.Record) error {
	h.on(h.name, r.Message)
	return nil
}
func (h *fleetHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *fleetHandler) WithGroup(string) slog.Handler      { return h }

func numCPU() int { return strings.Count(benchlab.Read("/proc/cpuinfo"), "processor\t:") }

func round(v float64) float64 { return math.Round(v*1000) / 1000 }
