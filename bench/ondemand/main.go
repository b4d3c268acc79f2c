// Command ondemand measures on-demand devices on this machine: the extra
// time of the first `ssh -J … true` to an asleep device over one that is
// connected (real server, agent and OpenSSH binaries, embedded broker), and
// the embedded broker's memory per idle connected agent, with N agents
// (real TLS MQTT sessions from a separate load-generator process) held
// against a real `switchboard serve`.
//
//	go run ./bench/ondemand -switchboard bin/switchboard [-runs 10] [-agents 10000] [-json FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
	"github.com/switchboard-dev/switchboard/internal/mqttc"
	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/wake"
)

func main() {
	sb := flag.String("switchboard", "bin/switchboard", "switchboard binary")
	runs := flag.Int("runs", 10, "asleep/connected pairs of ssh -J … true")
	agents := flag.Int("agents", 10000, "idle MQTT agents for the memory measurement")
	jsonPath := flag.String("json", "", "also write the results to this file (benchlab JSON)")
	flag.Parse()
	var err error
	if os.Getenv("SWITCHBOARD_BENCH_LOADGEN") != "" {
		err = loadgen()
	} else {
		res := &benchlab.Results{Program: "bench/ondemand", Command: benchlab.CommandLine("bench/ondemand")}
		err = run(*sb, *runs, *agents, res)
		if werr := res.WriteJSON(*jsonPath); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/ondemand:", err)
		os.Exit(1)
	}
}

func run(sb string, runs, agents int, res *benchlab.Results) error {
	if runs < 1 || agents < 1 {
		return fmt.Errorf("-runs and -agents must be positive")
	}
	sb, _ = filepath.Abs(sb)
	l, err := benchlab.New("switchboard-ondemand-bench")
	if err != nil {
		return err
	}
	defer l.Close()
	os.MkdirAll("/run/sshd", 0o755)
	fmt.Printf("machine: %d cores\n\n", strings.Count(benchlab.Read("/proc/cpuinfo"), "processor\t:"))
	if err := wakeTime(l, sb, runs, res); err != nil {
		return err
	}
	return brokerMemory(l, sb, agents, res)
}

// start runs a lab process (ended by l.Close, or killed if this process
// dies) with its stderr to log.
func start(l *benchlab.Lab, log *benchlab.Log, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = log
	return cmd, l.StartCmd(cmd)
}

// wakeTime runs a server, an on-demand agent in front of a real sshd, and
// times `ssh -J sb dev42 true` alternately asleep and still connected.
func wakeTime(l *benchlab.Lab, sb string, runs int, res *benchlab.Results) error {
	sshPort, mqttPort, targetPort := port(), port(), port()
	addr := fmt.Sprintf("127.0.0.1:%d", sshPort)
	state := l.Path("state")
	var serverLog, agentLog benchlab.Log
	if _, err := start(l, &serverLog, sb, "serve", "--listen", addr, "--state-dir", state, "--public-addr", addr,
		"--mqtt-listen", fmt.Sprintf("127.0.0.1:%d", mqttPort), "--log-level", "warn"); err != nil {
		return err
	}
	if err := benchlab.WaitFor(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(state, "public-addr")); return err == nil }); err != nil {
		return fmt.Errorf("server did not start: %s", serverLog.String())
	}
	if err := benchlab.WaitPort(sshPort); err != nil {
		return err
	}
	if err := benchlab.Sh(sb, "enroll", "dev42", "--role", "device", "--on-demand", "--out", l.Path("dev42"), "--state-dir", state,
		"--device-dir", l.Path("dev42"), "--mqtt-url", fmt.Sprintf("mqtts://127.0.0.1:%d", mqttPort),
		"--forward", fmt.Sprintf("22:127.0.0.1:%d", targetPort)); err != nil {
		return err
	}
	if err := benchlab.Sh(sb, "enroll", "alice", "--role", "operator", "--out", l.Path("alice"), "--state-dir", state); err != nil {
		return err
	}
	// The device's sshd, which lets alice in.
	if err := benchlab.Sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", l.Path("target_host")); err != nil {
		return err
	}
	os.WriteFile(l.Path("target_keys"), []byte(benchlab.Read(l.Path("alice", "id_ed25519.pub"))), 0o600)
	os.WriteFile(l.Path("sshd_config"), []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
`, targetPort, l.Path("target_host"), l.Path("target_keys"))), 0o600)
	var sshdLog benchlab.Log
	if _, err := start(l, &sshdLog, "/usr/sbin/sshd", "-D", "-e", "-f", l.Path("sshd_config")); err != nil {
		return err
	}
	idle := time.Second
	if _, err := start(l, &agentLog, sb, "agent", "--config", l.Path("dev42", "agent.yaml"), "--idle-timeout", idle.String()); err != nil {
		return err
	}
	if err := benchlab.WaitFor(10*time.Second, func() bool { return agentLog.Count("asleep") >= 1 }); err != nil {
		return fmt.Errorf("agent never went to sleep: %s", agentLog.String())
	}
	known := benchlab.Read(l.Path("alice", "known_hosts")) + "\ndev42 " + benchlab.Read(l.Path("target_host.pub")) + "\n"
	os.WriteFile(l.Path("known_hosts"), []byte(known), 0o600)
	os.WriteFile(l.Path("ssh_config"), []byte(fmt.Sprintf(`Host sb
  HostName 127.0.0.1
  Port %d
Host *
  User root
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  StrictHostKeyChecking yes
  BatchMode yes
`, sshPort, l.Path("alice", "id_ed25519"), l.Path("known_hosts"))), 0o600)

	ssh := func() (time.Duration, error) {
		start := time.Now()
		out, err := exec.Command("ssh", "-F", l.Path("ssh_config"), "-J", "sb", "dev42", "true").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("ssh -J: %w: %s", err, out)
		}
		return time.Since(start), nil
	}
	var asleep, connected []time.Duration
	for range runs {
		sleeps := agentLog.Count("asleep")
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
		if err := benchlab.WaitFor(3*idle+5*time.Second, func() bool { return agentLog.Count("asleep") > sleeps }); err != nil {
			return fmt.Errorf("agent did not go back to sleep: %s", agentLog.String())
		}
	}
	var extra []time.Duration
	for i := range asleep {
		extra = append(extra, asleep[i]-connected[i])
	}
	note := fmt.Sprintf("ssh -J sb dev42 true with a real agent (on demand, embedded broker) and sshd; %d alternating pairs", runs)
	res.Add(benchlab.Result{ID: "wake.connected", Name: "ssh -J … true to an on-demand device still connected", Unit: "ms", Better: "lower",
		Switchboard: ms(connected), Note: note})
	res.Add(benchlab.Result{ID: "wake.asleep", Name: "ssh -J … true to an asleep on-demand device (woken over MQTT)", Unit: "ms", Better: "lower",
		Switchboard: ms(asleep), Note: note})
	res.Add(benchlab.Result{ID: "wake.extra", Name: "extra time of a wake-up (asleep − connected, per pair)", Unit: "ms", Better: "lower",
		Switchboard: ms(extra), Note: note + "; each sample is one pair's difference"})
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
func brokerMemory(l *benchlab.Lab, sb string, n int, res *benchlab.Results) error {
	sshPort, mqttPort := port(), port()
	state := l.Path("mem-state")
	os.MkdirAll(state, 0o700)
	// The broker admits only enrolled devices: one authorized_keys line each
	// (one shared key is enough for that check).
	if err := benchlab.Sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", l.Path("fleet")); err != nil {
		return err
	}
	pub := strings.TrimSpace(benchlab.Read(l.Path("fleet.pub")))
	var ak strings.Builder
	for i := range n {
		fmt.Fprintf(&ak, "access=\"listen\",hostname=\"od%05d\" %s\n", i, pub)
	}
	os.WriteFile(filepath.Join(state, "authorized_keys"), []byte(ak.String()), 0o600)
	var serverLog benchlab.Log
	server, err := start(l, &serverLog, sb, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", sshPort), "--state-dir", state,
		"--public-addr", fmt.Sprintf("127.0.0.1:%d", sshPort), "--mqtt-listen", fmt.Sprintf("127.0.0.1:%d", mqttPort), "--log-level", "error")
	if err != nil {
		return err
	}
	if err := benchlab.WaitPort(mqttPort); err != nil {
		return fmt.Errorf("broker: %w: %s", err, serverLog.String())
	}
	time.Sleep(2 * time.Second) // settle start-up allocations before the baseline
	rss0, _ := benchlab.Memory(server.Process.Pid)

	var genOut benchlab.Log
	gen := exec.Command(os.Args[0], os.Args[1:]...)
	gen.Env = append(os.Environ(), "SWITCHBOARD_BENCH_LOADGEN=1",
		"LG_STATE="+state, "LG_URL="+fmt.Sprintf("mqtts://127.0.0.1:%d", mqttPort), "LG_N="+strconv.Itoa(n))
	gen.Stdout, gen.Stderr = &genOut, &genOut
	t0 := time.Now()
	p, err := benchlab.Spawn(gen)
	if err != nil {
		return err
	}
	defer p.Stop()
	deadline := time.Now().Add(10 * time.Minute)
	for !strings.Contains(genOut.String(), "ready") {
		select {
		case <-p.Done():
			if strings.Contains(genOut.String(), "ready") {
				continue
			}
			return fmt.Errorf("load generator exited (%v): %s", p.Err(), strings.TrimSpace(genOut.String()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("load generator not ready after 10 minutes: %s", strings.TrimSpace(genOut.String()))
		}
	}
	connectTime := time.Since(t0)
	time.Sleep(10 * time.Second) // idle: only keepalives
	rss1, hwm := benchlab.Memory(server.Process.Pid)
	per := float64(rss1-rss0) / float64(n)
	fmt.Printf("embedded broker with %d idle agents connected (mutual TLS, each subscribed to its wake topic,\n", n)
	fmt.Printf("its state retained), in the switchboard server process:\n")
	fmt.Printf("  server RSS %.1f MiB before, %.1f MiB with the agents (peak %.1f MiB): %.1f KiB per agent\n",
		float64(rss0)/1024, float64(rss1)/1024, float64(hwm)/1024, per)
	fmt.Printf("  %d agents connected in %v\n", n, connectTime.Round(100*time.Millisecond))
	res.Add(benchlab.Result{ID: "broker.per_agent", Name: "server memory per idle on-demand agent (embedded MQTT broker)", Unit: "KiB", Better: "lower",
		Switchboard: []float64{math.Round(per*100) / 100}, X: float64(n),
		Note: fmt.Sprintf("(RSS − baseline) / agents; mutual TLS, each subscribed to its wake topic, its state retained; RSS %.1f → %.1f MiB",
			float64(rss0)/1024, float64(rss1)/1024)})
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
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	var (
		wg       sync.WaitGroup
		failed   atomic.Int32
		firstErr atomic.Value
		sem      = make(chan struct{}, 64) // concurrent handshakes
	)
	fail := func(name string, err error) {
		failed.Add(1)
		firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", name, err))
	}
	clients := make([]*mqttc.Client, n)
	for i := range n {
		name := fmt.Sprintf("od%05d", i)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			certPEM, keyPEM, err := ca.Issue(name, pki.ClientCert, nil, time.Hour)
			if err != nil {
				fail(name, err)
				return
			}
			tc, err := pki.ClientTLS(ca.CertPEM(), certPEM, keyPEM, "127.0.0.1")
			if err != nil {
				fail(name, err)
				return
			}
			dctx, dcancel := context.WithTimeout(ctx, time.Minute)
			defer dcancel()
			c, err := mqttc.Dial(dctx, mqttc.Options{URL: os.Getenv("LG_URL"), ClientID: name, TLS: tc,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				fail(name, err)
				return
			}
			if _, err := c.Subscribe(dctx, topics.Wake(name), func([]byte, bool) {}); err != nil {
				fail(name, err)
				return
			}
			st := fmt.Sprintf(`{"v":1,"state":"asleep","since":"%s","agent":"bench"}`, time.Now().UTC().Format(time.RFC3339))
			if err := c.Publish(dctx, topics.State(name), []byte(st), true); err != nil {
				fail(name, err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d agents failed to connect (first: %v)", f, n, firstErr.Load())
	}
	fmt.Println("ready")
	<-term // hold the sessions until told to end; exiting closes them
	return nil
}

// port is a free loopback port; without one there is nothing to measure.
func port() int {
	p, err := benchlab.FreePort()
	if err != nil {
		panic(err)
	}
	return p
}

// ms converts durations to milliseconds, rounded to 0.1 ms.
func ms(ds []time.Duration) []float64 {
	var out []float64
	for _, d := range ds {
		out = append(out, math.Round(float64(d)/float64(time.Millisecond)*10)/10)
	}
	return out
}
