package main

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

// reading is the server's memory at one moment.
type reading struct {
	rss                                 int // KiB, from /proc
	heap, stack, goroutines, devicesNow float64
}

// server is a running switchboard serve with its metrics endpoint.
type server struct {
	cmd     *exec.Cmd
	metrics string // http://127.0.0.1:PORT
	client  http.Client
}

func (s *server) read() (reading, error) {
	r := reading{}
	r.rss, _ = benchlab.Memory(s.cmd.Process.Pid)
	resp, err := s.client.Get(s.metrics + "/metrics")
	if err != nil {
		return r, fmt.Errorf("server metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return r, fmt.Errorf("server metrics: %w", err)
	}
	body := string(b)
	r.heap = metric(body, "go_memstats_heap_inuse_bytes")
	r.stack = metric(body, "go_memstats_stack_inuse_bytes")
	r.goroutines = metric(body, "go_goroutines")
	r.devicesNow = metric(body, "switchboard_devices_connected")
	if r.rss == 0 || r.heap == 0 || r.goroutines == 0 {
		return r, fmt.Errorf("server metrics: no RSS, heap or goroutines (%d bytes of metrics)", len(b))
	}
	return r, nil
}

var metricLine = map[string]*regexp.Regexp{}

func metric(body, name string) float64 {
	re, ok := metricLine[name]
	if !ok {
		re = regexp.MustCompile(`(?m)^` + name + ` (\S+)$`)
		metricLine[name] = re
	}
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// switchboardDevices holds o.counts devices in turn against a real
// switchboard serve, adds the memory figures to res, and returns the RSS
// per device at each count (for the comparison with OpenSSH). The server
// and its load generators are gone when it returns.
func switchboardDevices(l *benchlab.Lab, o options, f fleet, nextSrc *int, res *benchlab.Results) (map[int]float64, error) {
	if err := os.MkdirAll(l.Path("state"), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(l.Path("state", "authorized_keys"),
		[]byte(`access="listen" `+string(ssh.MarshalAuthorizedKey(f.pub))), 0o600); err != nil {
		return nil, err
	}
	sshPort, err := benchlab.FreePort()
	if err != nil {
		return nil, err
	}
	metricsPort, err := benchlab.FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sshPort)
	var serverLog benchlab.Log
	cmd := exec.Command(o.sb, "serve", "--listen", addr, "--state-dir", l.Path("state"),
		"--mqtt", "off", "--log-level", "error", "--metrics", fmt.Sprintf("127.0.0.1:%d", metricsPort), "--pprof",
		"--max-unauth", "100000", "--max-unauth-per-source", "100000")
	cmd.Stderr = &serverLog
	if err := l.StartCmd(cmd); err != nil {
		return nil, err
	}
	defer benchlab.Stop(cmd)
	if err := benchlab.WaitPort(sshPort); err != nil {
		return nil, fmt.Errorf("switchboard: %w: %s", err, serverLog.String())
	}
	s := &server{cmd: cmd, metrics: fmt.Sprintf("http://127.0.0.1:%d", metricsPort), client: http.Client{Timeout: 10 * time.Second}}
	gens := &loadgens{
		t: target{addr: addr, hostKey: strings.TrimSpace(benchlab.Read(l.Path("state", "ssh_host_ed25519_key.pub"))),
			fwd: "localhost:22"},
		key: f.path, inflight: o.inflight, next: nextSrc,
	}
	defer gens.stop()

	time.Sleep(o.settle)
	base, err := s.read()
	if err != nil {
		return nil, err
	}
	fmt.Printf("server: switchboard serve --mqtt off, idle devices each with one tcpip-forward, keepalive every 15s\n")
	fmt.Printf("load: processes of ≤ %d devices, each from its own 127.0.x.y, %d handshakes in flight each, all of a step's\n"+
		"processes dialling at once, on the same machine; %v idle before each reading\n", perProcess, o.inflight, o.settle)
	fmt.Printf("baseline: RSS %.1f MiB, Go heap in use %.1f MiB, Go stacks %.2f MiB, %d goroutines\n\n",
		float64(base.rss)/1024, base.heap/(1<<20), base.stack/(1<<20), int(base.goroutines))
	fmt.Printf("%8s %9s %9s %12s %12s %13s %12s %9s %10s\n", "devices", "connected", "RSS MiB", "RSS/device",
		"heap/device", "stack/device", "goroutines/d", "connect s", "devices/s")

	perDevice := map[int]float64{}
	var largest step
	largestTo := 0
	have := 0
	for _, n := range o.counts {
		st, err := gens.add(have, n-have)
		if err != nil {
			return nil, err
		}
		time.Sleep(o.settle)
		r, err := s.read()
		if err != nil {
			return nil, err
		}
		connected := int(r.devicesNow)
		rate := float64(st.connected) / st.took.Seconds()
		div := float64(max(connected, 1))
		rssPer := float64(r.rss-base.rss) / div
		heapPer := (r.heap - base.heap) / 1024 / div
		stackPer := (r.stack - base.stack) / 1024 / div
		gPer := (r.goroutines - base.goroutines) / div
		fmt.Printf("%8d %9d %9.1f %8.1f KiB %8.1f KiB %9.1f KiB %12.2f %9.1f %10.0f\n", n, connected,
			float64(r.rss)/1024, rssPer, heapPer, stackPer, gPer, st.took.Seconds(), rate)
		note := ""
		if connected < n {
			note = fmt.Sprintf("only %d of %d devices connected; per-device figures divide by %d", connected, n, connected)
		}
		x := float64(n)
		res.Add(benchlab.Result{ID: "devices.connected", Name: "devices connected (and still connected after the settle)",
			Unit: "devices", Better: "higher", Switchboard: []float64{float64(connected)}, X: x, Note: note})
		res.Add(benchlab.Result{ID: "memory.rss_per_device", Name: "server RSS per idle device ((RSS − baseline) / devices)",
			Unit: "KiB", Better: "lower", Switchboard: []float64{round(rssPer)}, X: x, Note: note})
		res.Add(benchlab.Result{ID: "memory.heap_per_device", Name: "Go heap in use per idle device",
			Unit: "KiB", Better: "lower", Switchboard: []float64{round(heapPer)}, X: x, Note: note})
		res.Add(benchlab.Result{ID: "memory.stack_per_device", Name: "Go goroutine stacks in use per idle device",
			Unit: "KiB", Better: "lower", Switchboard: []float64{round(stackPer)}, X: x, Note: note})
		res.Add(benchlab.Result{ID: "memory.goroutines_per_device", Name: "goroutines per idle device",
			Unit: "goroutines", Better: "lower", Switchboard: []float64{round(gPer)}, X: x, Note: note})
		res.Add(benchlab.Result{ID: "memory.rss_total", Name: "server RSS",
			Unit: "MiB", Better: "lower", Switchboard: []float64{round(float64(r.rss) / 1024)}, X: x, Note: note})
		if connected < n || st.connected < st.devices {
			why := ""
			if st.firstErr != "" {
				why = " (first error: " + st.firstErr + ")"
			}
			return nil, fmt.Errorf("only %d of %d devices connected (the load generators report %d of %d new ones)%s",
				connected, n, st.connected, st.devices, why)
		}
		perDevice[n] = rssPer
		if st.devices >= largest.devices {
			largest, largestTo = st, n
		}
		have = n
	}
	rate := float64(largest.connected) / largest.took.Seconds()
	fmt.Printf("\nhandshakes: %d new devices in %.1f s in the largest step (%d → %d devices): %.0f devices/s\n"+
		"  (%d load-generator processes × %d handshakes in flight, sharing the machine's %d cores with the server)\n",
		largest.connected, largest.took.Seconds(), largestTo-largest.devices, largestTo, rate,
		largest.gens, o.inflight, numCPU())
	res.Add(benchlab.Result{ID: "handshake.rate", Name: "new device connections admitted per second (SSH handshake, auth, tcpip-forward)",
		Unit: "devices/s", Better: "higher", Switchboard: []float64{round(rate)},
		Note: fmt.Sprintf("switchboard: %d devices (%d → %d) in %.1f s, %d load generators × %d handshakes in flight, load generators on the same %d cores",
			largest.connected, largestTo-largest.devices, largestTo, largest.took.Seconds(), largest.gens, o.inflight, numCPU())})

	if o.profile != "" {
		resp, err := s.client.Get(s.metrics + "/debug/pprof/heap")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(o.profile, b, 0o644); err != nil {
			return nil, err
		}
		fmt.Printf("\nheap profile at %d devices: %s (go tool pprof -top -sample_index=inuse_space %s)\n", have, o.profile, o.profile)
	}
	return perDevice, nil
}

func round(v float64) float64 { return math.Round(v*100) / 100 }

func numCPU() int { return strings.Count(benchlab.Read("/proc/cpuinfo"), "processor\t:") }
