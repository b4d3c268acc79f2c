// Command circuits opens many circuits at once through a real `switchboard
// serve` and checks every byte: devices (real SSH connections with a
// tcpip-forward) answer each circuit with the SHA-256 of what they read,
// and each operator circuit sends random data and compares. Errors must be 0.
//
//	go run ./bench/circuits -switchboard bin/switchboard [-circuits 1000] [-size 1MiB] [-devices 8]
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
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
	flag.Parse()
	if err := run(*sb, *circuits, *size, *devices, *operators); err != nil {
		fmt.Fprintln(os.Stderr, "bench/circuits:", err)
		os.Exit(1)
	}
}

func signer() (ssh.Signer, string) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := ssh.NewSignerFromKey(priv)
	return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

func run(sb string, n, size, nDevices, nOperators int) error {
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
	if _, err := l.Start(&serverLog, sb, "serve", "--listen", addr, "--state-dir", l.Path("state"),
		"--mqtt", "off", "--log-level", "error", "--max-circuits", "100000", "--max-circuits-per-key", "100000"); err != nil {
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

	// Devices: each circuit is read to EOF, then answered with its SHA-256.
	// Their goroutines end when their connections close, at return.
	for i := range nDevices {
		c, err := dial(fmt.Sprintf("cdev%d", i), devKey)
		if err != nil {
			return err
		}
		defer c.Close()
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
			return err
		}
		defer ops[i].Close()
	}
	var (
		wg        sync.WaitGroup
		errs      atomic.Int32
		firstErr  atomic.Value
		durations = make([]time.Duration, n)
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
			}
			durations[i] = time.Since(t0)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	total := time.Since(t0)
	slices.Sort(durations)
	fmt.Printf("%d circuits at once, %d KiB each, over %d devices and %d operator connections, checksummed end to end:\n",
		n, size>>10, nDevices, nOperators)
	fmt.Printf("  errors: %d", errs.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf(" (first: %v)", e)
	}
	fmt.Printf("\n  all done in %v (%.1f MiB/s aggregate); per circuit median %v, p99 %v\n",
		total.Round(time.Millisecond), float64(n*size)/(1<<20)/total.Seconds(),
		durations[n/2].Round(time.Millisecond), durations[n*99/100].Round(time.Millisecond))
	if errs.Load() > 0 {
		return fmt.Errorf("%d circuits failed", errs.Load())
	}
	return nil
}
