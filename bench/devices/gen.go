package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
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

// fleet is the one key every simulated device logs in with.
type fleet struct {
	path string        // private key file (OpenSSH format)
	pub  ssh.PublicKey // its public half
}

func writeFleetKey(l *benchlab.Lab) (fleet, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fleet{}, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return fleet{}, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return fleet{}, err
	}
	f := fleet{path: l.Path("fleet"), pub: signer.PublicKey()}
	return f, os.WriteFile(f.path, pem.EncodeToMemory(block), 0o600)
}

// target is a server the load generators hold devices against.
type target struct {
	addr    string // host:port
	hostKey string // the server's host key, authorized_keys format
	user    string // the SSH user; "" means each device its own name (d000042)
	fwd     string // the tcpip-forward each device asks for, host:port
}

// loadgens are the load-generator processes holding devices against one
// target; each has its own 127.0.x.y source address.
type loadgens struct {
	t        target
	key      string // the fleet key file
	inflight int    // handshakes in flight per process
	next     *int   // source addresses handed out so far, shared by all targets
	procs    []*benchlab.Proc
}

// step is what one add did.
type step struct {
	devices, connected int
	gens               int
	took               time.Duration
	firstErr           string
}

var readyLine = regexp.MustCompile(`(?m)^ready (\d+) (\d+)$`)
var firstErrLine = regexp.MustCompile(`(?m)^first error: (.*)$`)

// add starts enough processes for n more devices, numbered from first,
// split evenly between them and all dialling at once, and waits until each
// has reported how many it holds.
func (g *loadgens) add(first, n int) (step, error) {
	self, err := os.Executable()
	if err != nil {
		return step{}, err
	}
	k := (n + perProcess - 1) / perProcess
	st := step{devices: n, gens: k}
	start := time.Now()
	var outs []*benchlab.Log
	var procs []*benchlab.Proc
	for i := range k {
		batch := n / k
		if i < n%k {
			batch++
		}
		src := fmt.Sprintf("127.0.%d.%d", 1+*g.next/250, 2+*g.next%250)
		*g.next++
		out := new(benchlab.Log)
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), genEnv+"=1", "GEN_ADDR="+g.t.addr, "GEN_KEY="+g.key,
			"GEN_HOSTKEY="+g.t.hostKey, "GEN_USER="+g.t.user, "GEN_FWD="+g.t.fwd,
			"GEN_N="+strconv.Itoa(batch), "GEN_FIRST="+strconv.Itoa(first), "GEN_SRC="+src,
			"GEN_INFLIGHT="+strconv.Itoa(g.inflight))
		cmd.Stdout, cmd.Stderr = out, out
		p, err := benchlab.Spawn(cmd)
		if err != nil {
			return st, err
		}
		g.procs = append(g.procs, p)
		procs = append(procs, p)
		outs = append(outs, out)
		first += batch
	}
	deadline := time.Now().Add(10 * time.Minute)
	for i, p := range procs {
		for {
			m := readyLine.FindStringSubmatch(outs[i].String())
			if m != nil {
				ok, _ := strconv.Atoi(m[1])
				st.connected += ok
				if e := firstErrLine.FindStringSubmatch(outs[i].String()); e != nil && st.firstErr == "" {
					st.firstErr = e[1]
				}
				break
			}
			select {
			case <-p.Done():
				if readyLine.MatchString(outs[i].String()) {
					continue
				}
				return st, fmt.Errorf("load generator exited (%v): %s", p.Err(), strings.TrimSpace(outs[i].String()))
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return st, fmt.Errorf("load generator not ready after 10 minutes: %s", strings.TrimSpace(outs[i].String()))
			}
		}
	}
	st.took = time.Since(start)
	return st, nil
}

// stop ends every process (their devices hang up).
func (g *loadgens) stop() {
	for _, p := range g.procs {
		p.Stop()
	}
	g.procs = nil
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT from linux/in.h.
const ipBindAddressNoPort = 24

// bindAddressNoPort lets connect, not bind, choose the source port, so a
// port is shared by connections to different destinations: otherwise
// bind(ADDR, 0) needs a port free on ADDR, and the TIME_WAIT sockets of an
// earlier run from the same address exhaust the ephemeral range.
func bindAddressNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// generate is one load-generator process: GEN_N devices, each a real SSH
// connection with one tcpip-forward, keepalives answered, held until the
// process is told to end (SIGTERM). It prints "ready CONNECTED FAILED"
// once every device has connected or failed.
func generate() error {
	n, _ := strconv.Atoi(os.Getenv("GEN_N"))
	first, _ := strconv.Atoi(os.Getenv("GEN_FIRST"))
	inflight, _ := strconv.Atoi(os.Getenv("GEN_INFLIGHT"))
	addr, user := os.Getenv("GEN_ADDR"), os.Getenv("GEN_USER")
	key, err := ssh.ParsePrivateKey([]byte(benchlab.Read(os.Getenv("GEN_KEY"))))
	if err != nil {
		return err
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(os.Getenv("GEN_HOSTKEY")))
	if err != nil {
		return err
	}
	fwdHost, fwdPort, err := net.SplitHostPort(os.Getenv("GEN_FWD"))
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(fwdPort)
	if err != nil {
		return err
	}
	payload := ssh.Marshal(struct { // RFC 4254 7.1 tcpip-forward
		Addr string
		Port uint32
	}{fwdHost, uint32(port)})
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)

	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(os.Getenv("GEN_SRC"))}, Timeout: time.Minute,
		Control: bindAddressNoPort}
	var (
		wg       sync.WaitGroup
		ok, bad  atomic.Int64
		firstErr atomic.Value
		sem      = make(chan struct{}, inflight)
		conns    = make([]ssh.Conn, n)
	)
	fail := func(err error) {
		bad.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	for i := range n {
		name := user
		if name == "" {
			name = fmt.Sprintf("d%06d", first+i)
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			nc, err := dialer.Dial("tcp", addr)
			if err != nil {
				fail(err)
				return
			}
			nc.SetDeadline(time.Now().Add(2 * time.Minute)) // the handshake and the forward
			c, chans, reqs, err := ssh.NewClientConn(nc, addr, &ssh.ClientConfig{
				User: name, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)}, HostKeyCallback: ssh.FixedHostKey(hostKey),
			})
			if err != nil {
				nc.Close()
				fail(fmt.Errorf("%s: %w", name, err))
				return
			}
			go ssh.DiscardRequests(reqs) // answers the server's keepalives
			go func() {
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "load generator")
				}
			}()
			if granted, _, err := c.SendRequest("tcpip-forward", true, payload); err != nil || !granted {
				c.Close()
				fail(fmt.Errorf("%s: tcpip-forward %s refused (%v)", name, os.Getenv("GEN_FWD"), err))
				return
			}
			nc.SetDeadline(time.Time{})
			conns[i] = c
			ok.Add(1)
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		fmt.Printf("first error: %s\n", strings.ReplaceAll(e.(string), "\n", " "))
	}
	fmt.Printf("ready %d %d\n", ok.Load(), bad.Load())
	<-term // hold every connection until told to end
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	return nil
}
