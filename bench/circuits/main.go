// Command circuits opens many circuits at once through a real `switchboard
// serve` and checks every byte: devices (real SSH connections with a
// tcpip-forward) answer each circuit with the SHA-256 of what they read,
// and each operator circuit sends random data and compares. Errors must be 0.
//
//	go run ./bench/circuits -switchboard bin/switchboard [-circuits 1000] [-size 1048576] [-devices 8] [-json FILE]
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

func main() {
	sb := flag.String("switchboard", "bin/switchboard", "switchboard binary")
	circuits := flag.Int("circuits", 1000, "circuits opened at once")
	size := flag.Int("size", 1<<20, "bytes sent through each circuit")
	devices := flag.Int("devices", 8, "devices the circuits are spread over")
	operators := flag.Int("operators", 8, "operator SSH connections the circuits are spread over")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up on circuits still open after this long (they count as errors)")
	jsonPath := flag.String("json", "", "also write the results to this file (benchlab JSON)")
	flag.Parse()
	res := &benchlab.Results{Program: "bench/circuits", Command: benchlab.CommandLine("bench/circuits")}
	err := run(*sb, *circuits, *size, *devices, *operators, *timeout, res)
	if werr := res.WriteJSON(*jsonPath); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/circuits:", err)
		os.Exit(1)
	}
}

func signer() (ssh.Signer, string) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := ssh.NewSignerFromKey(priv)
	return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

func run(sb string, n, size, nDevices, nOperators int, timeout time.Duration, res *benchlab.Results) error {
	if n < 1 || size < 0 || nDevices < 1 || nOperators < 1 {
		return fmt.Errorf("-circuits, -devices and -operators must be positive")
	}
	l, err := benchlab.New("switchboard-circuits-bench")
	if err != nil {
		return err
	}
	defer l.Close()
	devKey, devPub := signer()
	opKey, opPub := signer()
	os.MkdirAll(l.Path("state"), 0o700)
	os.WriteFile(l.Path("state", "authorized_keys"), []byte(
		`access="listen" `+devPub+"\n"+`access="initiate" `+opPub+"\n"), 0o600)
	port, err := benchlab.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var serverLog benchlab.Log
	server := exec.Command(sb, "serve", "--listen", addr, "--state-dir", l.Path("state"),
		"--mqtt", "off", "--log-level", "error", "--max-circuits", "100000", "--max-circuits-per-key", "100000")
	server.Stderr = &serverLog
	if err := l.StartCmd(server); err != nil {
		return err
	}
	if err := benchlab.WaitPort(port); err != nil {
		return fmt.Errorf("%w: %s", err, serverLog.String())
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(benchlab.Read(l.Path("state", "ssh_host_ed25519_key.pub"))))
	if err != nil {
		return err
	}
	dial := func(user string, key ssh.Signer) (*ssh.Client, error) {
		return ssh.Dial("tcp", addr, &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
			HostKeyCallback: ssh.FixedHostKey(pub), Timeout: 30 * time.Second})
	}

	// Every client closes at return, or when the watchdog fires, which
	// ends the goroutines serving them.
	var (
		clientsMu sync.Mutex
		clients   []*ssh.Client
	)
	closeAll := func() {
		clientsMu.Lock()
		defer clientsMu.Unlock()
		for _, c := range clients {
			c.Close()
		}
	}
	defer closeAll()
	keep := func(c *ssh.Client) {
		clientsMu.Lock()
		defer clientsMu.Unlock()
		clients = append(clients, c)
	}

	// Devices: each circuit is read to EOF, then answered with its SHA-256.
	for i := range nDevices {
		c, err := dial(fmt.Sprintf("cdev%d", i), devKey)
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		keep(c)
		chans := c.HandleChannelOpen("forwarded-tcpip")
		payload := ssh.Marshal(struct {
			Addr string
			Port uint32
		}{"localhost", 22})
		if ok, _, err := c.SendRequest("tcpip-forward", true, payload); !ok || err != nil {
			return fmt.Errorf("device %d: tcpip-forward refused: %v", i, err)
		}
		go func() {
			for nc := range chans {
				ch, reqs, err := nc.Accept()
				if err != nil {
					continue
				}
				go ssh.DiscardRequests(reqs)
				go func() {
					h := sha256.New()
					io.Copy(h, ch)
					ch.Write(h.Sum(nil))
					ch.CloseWrite()
					ch.Close()
				}()
			}
		}()
	}

	ops := make([]*ssh.Client, nOperators)
	for i := range ops {
		if ops[i], err = dial(fmt.Sprintf("op%d", i), opKey); err != nil {
			return fmt.Errorf("operator %d: %w", i, err)
		}
		keep(ops[i])
	}
	var (
		wg        sync.WaitGroup
		errs      atomic.Int32
		firstErr  atomic.Value
		durMu     sync.Mutex
		durations []time.Duration // of the circuits that succeeded
		start     = make(chan struct{})
	)
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := make([]byte, size)
			rand.Read(data)
			want := sha256.Sum256(data)
			<-start
			t0 := time.Now()
			conn, err := ops[i%nOperators].Dial("tcp", fmt.Sprintf("cdev%d:22", i%nDevices))
			if err != nil {
				fail(err)
				return
			}
			defer conn.Close()
			if _, err := io.Copy(conn, bytes.NewReader(data)); err != nil {
				fail(err)
				return
			}
			conn.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(conn)
			switch {
			case err != nil:
				fail(err)
			case !bytes.Equal(got, want[:]):
				fail(fmt.Errorf("circuit %d: digest mismatch", i))
			default:
				d := time.Since(t0)
				durMu.Lock()
				durations = append(durations, d)
				durMu.Unlock()
			}
		}()
	}
	t0 := time.Now()
	close(start)
	watchdog := time.AfterFunc(timeout, func() {
		firstErr.CompareAndSwap(nil, fmt.Sprintf("circuits still open after %v", timeout))
		closeAll() // fails every circuit still open
	})
	wg.Wait()
	watchdog.Stop()
	total := time.Since(t0)
	slices.Sort(durations)
	pct := func(p float64) time.Duration {
		if len(durations) == 0 {
			return 0
		}
		return durations[max(0, int(math.Ceil(p*float64(len(durations))))-1)]
	}
	agg := float64(len(durations)*size) / (1 << 20) / total.Seconds()
	fmt.Printf("%d circuits at once, %d KiB each, over %d devices and %d operator connections, checksummed end to end:\n",
		n, size>>10, nDevices, nOperators)
	fmt.Printf("  errors: %d", errs.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf(" (first: %v)", e)
	}
	fmt.Printf("\n  all done in %v (%.1f MiB/s aggregate); per circuit median %v, p99 %v\n",
		total.Round(time.Millisecond), agg, pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond))
	note := fmt.Sprintf("%d circuits of %d KiB opened at once over %d devices and %d operator connections, SHA-256 checked end to end",
		n, size>>10, nDevices, nOperators)
	res.Add(benchlab.Result{ID: "circuits.errors", Name: "circuits failed or corrupted", Unit: "errors", Better: "lower",
		Switchboard: []float64{float64(errs.Load())}, Note: note})
	res.Add(benchlab.Result{ID: "circuits.aggregate", Name: "aggregate throughput of concurrent circuits", Unit: "MiB/s", Better: "higher",
		Switchboard: []float64{round(agg)}, Note: note + "; counting the circuits that succeeded"})
	res.Add(benchlab.Result{ID: "circuits.p50", Name: "median circuit's time (open, send, digest back)", Unit: "s", Better: "lower",
		Switchboard: []float64{round(pct(0.5).Seconds())}, Note: note})
	res.Add(benchlab.Result{ID: "circuits.p99", Name: "99th percentile circuit's time (open, send, digest back)", Unit: "s", Better: "lower",
		Switchboard: []float64{round(pct(0.99).Seconds())}, Note: note})
	if errs.Load() > 0 {
		return fmt.Errorf("%d of %d circuits failed (first: %v)", errs.Load(), n, firstErr.Load())
	}
	return nil
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }
