// Command devices measures the server's memory per idle connected device:
// it starts a real `switchboard serve`, then load-generator processes that
// each hold many device connections (real SSH handshakes, a real
// tcpip-forward each, keepalives answered) from their own 127.0.0.x source
// address, and reads the server's RSS from /proc and its Go heap and
// goroutines from its /metrics, at each device count.
//
//	go run ./bench/devices -switchboard bin/switchboard [-counts 1000,5000,10000,19000]
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

// perProcess keeps each load generator well under the 20,000 open files a
// process may have here.
const perProcess = 5000

func main() {
	sb := flag.String("switchboard", "bin/switchboard", "switchboard binary")
	counts := flag.String("counts", "1000,5000,10000,19000", "device counts to measure at, ascending")
	profile := flag.String("heap-profile", "", "save the server's heap profile at the largest count to this file")
	flag.Parse()
	var err error
	if os.Getenv("SWITCHBOARD_BENCH_DEVICES") != "" {
		err = generate()
	} else {
		err = run(*sb, *counts, *profile)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/devices:", err)
		os.Exit(1)
	}
}

func run(sb, countList, profile string) error {
	var counts []int
	for _, s := range strings.Split(countList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("bad count %q", s)
		}
		counts = append(counts, n)
	}
	l, err := benchlab.New("switchboard-devices-bench")
	if err != nil {
		return err
	}
	defer l.Close()

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	os.WriteFile(l.Path("fleet"), pem.EncodeToMemory(block), 0o600)
	os.MkdirAll(l.Path("state"), 0o700)
	os.WriteFile(l.Path("state", "authorized_keys"),
		[]byte(`access="listen" `+string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), 0o600)
	sshPort, err := benchlab.FreePort()
	if err != nil {
		return err
	}
	metricsPort, err := benchlab.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sshPort)
	var serverLog benchlab.Log
	server, err := l.Start(&serverLog, sb, "serve", "--listen", addr, "--state-dir", l.Path("state"),
		"--mqtt", "off", "--log-level", "error", "--metrics", fmt.Sprintf("127.0.0.1:%d", metricsPort), "--pprof",
		"--max-unauth", "100000", "--max-unauth-per-source", "100000")
	if err != nil {
		return err
	}
	if err := benchlab.WaitPort(sshPort); err != nil {
		return fmt.Errorf("%w: %s", err, serverLog.String())
	}
	hostKey := strings.TrimSpace(benchlab.Read(l.Path("state", "ssh_host_ed25519_key.pub")))
	metrics := func() (heap, goroutines float64) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		if err != nil {
			return 0, 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return metric(string(b), "go_memstats_heap_inuse_bytes"), metric(string(b), "go_goroutines")
	}
	settle := func() { time.Sleep(5 * time.Second) } // idle: only keepalives; let the GC catch up
	settle()
	rss0, _ := benchlab.Memory(server.Process.Pid)
	heap0, g0 := metrics()
	fmt.Printf("server: switchboard serve --mqtt off, idle devices each with one tcpip-forward, keepalive every 15s\n")
	fmt.Printf("baseline: RSS %.1f MiB, Go heap in use %.1f MiB, %d goroutines\n\n", float64(rss0)/1024, heap0/(1<<20), int(g0))
	fmt.Printf("%8s %12s %14s %12s %14s %14s %12s\n", "devices", "RSS MiB", "RSS/device", "heap MiB", "heap/device", "goroutines", "connect s")

	var (
		mu   sync.Mutex
		gens []*exec.Cmd
		have int
	)
	defer func() {
		for _, g := range gens {
			benchlab.Stop(g)
		}
	}()
	for _, n := range counts {
		start := time.Now()
		for have < n {
			batch := min(perProcess, n-have)
			var out benchlab.Log
			g := exec.Command(os.Args[0], os.Args[1:]...)
			g.Env = append(os.Environ(), "SWITCHBOARD_BENCH_DEVICES=1", "GEN_ADDR="+addr, "GEN_KEY="+l.Path("fleet"),
				"GEN_HOSTKEY="+hostKey, "GEN_N="+strconv.Itoa(batch), "GEN_FIRST="+strconv.Itoa(have),
				"GEN_SRC="+fmt.Sprintf("127.0.%d.%d", 1+len(gens)/200, 2+len(gens)%200))
			g.Stdout, g.Stderr = &out, &out
			g.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := g.Start(); err != nil {
				return err
			}
			mu.Lock()
			gens = append(gens, g)
			mu.Unlock()
			if err := benchlab.WaitFor(5*time.Minute, func() bool { return strings.Contains(out.String(), "ready") }); err != nil {
				return fmt.Errorf("load generator: %s", out.String())
			}
			if strings.Contains(out.String(), "failed") {
				return fmt.Errorf("load generator: %s", out.String())
			}
			have += batch
		}
		took := time.Since(start)
		settle()
		rss, _ := benchlab.Memory(server.Process.Pid)
		heap, g := metrics()
		fmt.Printf("%8d %12.1f %11.1f KiB %12.1f %11.1f KiB %14d %12.1f\n", n,
			float64(rss)/1024, float64(rss-rss0)/float64(n), heap/(1<<20), (heap-heap0)/1024/float64(n), int(g), took.Seconds())
	}
	if profile != "" {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", metricsPort))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := os.WriteFile(profile, b, 0o644); err != nil {
			return err
		}
		fmt.Printf("\nheap profile at %d devices: %s (go tool pprof -top -sample_index=inuse_space %s)\n", counts[len(counts)-1], profile, profile)
	}
	return nil
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

// generate is one load-generator process: GEN_N devices named from
// GEN_FIRST, each a real SSH connection with one tcpip-forward, held until
// the process is killed.
func generate() error {
	n, _ := strconv.Atoi(os.Getenv("GEN_N"))
	first, _ := strconv.Atoi(os.Getenv("GEN_FIRST"))
	key, err := ssh.ParsePrivateKey([]byte(benchlab.Read(os.Getenv("GEN_KEY"))))
	if err != nil {
		return err
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(os.Getenv("GEN_HOSTKEY")))
	if err != nil {
		return err
	}
	src := &net.TCPAddr{IP: net.ParseIP(os.Getenv("GEN_SRC"))}
	dialer := net.Dialer{LocalAddr: src, Timeout: time.Minute}
	var (
		wg     sync.WaitGroup
		failed atomic.Int32
		sem    = make(chan struct{}, 32) // handshakes in flight
		conns  = make([]ssh.Conn, n)
		first1 atomic.Value
	)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			nc, err := dialer.DialContext(context.Background(), "tcp", os.Getenv("GEN_ADDR"))
			if err != nil {
				failed.Add(1)
				first1.CompareAndSwap(nil, err.Error())
				return
			}
			c, chans, reqs, err := ssh.NewClientConn(nc, os.Getenv("GEN_ADDR"), &ssh.ClientConfig{
				User: fmt.Sprintf("d%06d", first+i), Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
				HostKeyCallback: ssh.FixedHostKey(hostKey),
			})
			if err != nil {
				failed.Add(1)
				first1.CompareAndSwap(nil, err.Error())
				return
			}
			go ssh.DiscardRequests(reqs) // answers the server's keepalives
			go func() {
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "load generator")
				}
			}()
			payload := ssh.Marshal(struct {
				Addr string
				Port uint32
			}{"localhost", 22})
			if ok, _, err := c.SendRequest("tcpip-forward", true, payload); err != nil || !ok {
				failed.Add(1)
				first1.CompareAndSwap(nil, fmt.Sprintf("tcpip-forward refused: %v", err))
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Printf("failed: %d of %d devices (first: %v)\n", f, n, first1.Load())
	}
	fmt.Println("ready")
	select {} // hold every connection until killed
}
