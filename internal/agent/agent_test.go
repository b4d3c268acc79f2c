package agent_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/switchboard-dev/switchboard/internal/agent"
	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/policy"
	"github.com/switchboard-dev/switchboard/internal/sshd"
)

// These tests run the agent against the real server package in process: a
// real SSH peer, and goleak proves the agent's goroutines all end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func signer(t testing.TB) (ssh.Signer, ed25519.PrivateKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, priv
}

// server is an in-process switchboard that can be stopped and started again
// on the same address, as after a restart.
type server struct {
	t        testing.TB
	addr     string
	host     ssh.Signer
	policy   *policy.Policy
	board    *board.Board
	srv      *sshd.Server
	served   chan error
	stopOnce sync.Once
}

func startServer(t testing.TB, addr string, host ssh.Signer, p *policy.Policy) *server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, addr: ln.Addr().String(), host: host, policy: p, board: board.New(nil), served: make(chan error, 1)}
	s.srv, err = sshd.New(sshd.Config{
		HostKeys: []ssh.Signer{host},
		Policy:   func() *policy.Policy { return p },
		Board:    s.board,
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() { s.served <- s.srv.Serve(ln) }()
	t.Cleanup(s.stop)
	return s
}

func (s *server) stop() {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(ctx)
		<-s.served
	})
}

func (s *server) connected(name string) bool {
	info, _ := s.board.Lookup(name)
	return info.Connected
}

// echo is the device's local service: it echoes each connection.
func echo(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// lab holds the files an agent needs: its key and a pinned known_hosts.
type lab struct {
	dir      string
	devKey   ssh.Signer
	opKey    ssh.Signer
	hostKey  ssh.Signer
	identity string
	policy   *policy.Policy
}

func newLab(t testing.TB) *lab {
	t.Helper()
	l := &lab{dir: t.TempDir()}
	var devPriv ed25519.PrivateKey
	l.devKey, devPriv = signer(t)
	l.opKey, _ = signer(t)
	l.hostKey, _ = signer(t)
	block, err := ssh.MarshalPrivateKey(devPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	l.identity = filepath.Join(l.dir, "id_ed25519")
	if err := os.WriteFile(l.identity, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	line := func(opts string, k ssh.Signer) string {
		return opts + " " + string(ssh.MarshalAuthorizedKey(k.PublicKey()))
	}
	p, errs := policy.Parse([]byte(line(`access="listen",hostname="dev42"`, l.devKey) + line(`access="initiate"`, l.opKey)))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	l.policy = p
	return l
}

func (l *lab) knownHosts(t testing.TB, addr string, key ssh.PublicKey) string {
	t.Helper()
	path := filepath.Join(l.dir, "known_hosts")
	if err := os.WriteFile(path, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// logs is a concurrency-safe JSON log sink the tests can search.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) has(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.SplitSeq(l.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			return true
		}
	}
	return false
}

func eventually(t testing.TB, within time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func runAgent(t testing.TB, cfg agent.Config) (*agent.Agent, *logs) {
	t.Helper()
	out := &logs{}
	a, err := agent.New(cfg, slog.New(slog.NewJSONHandler(out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a, out
}

func roundTrip(t testing.TB, addr string, host ssh.PublicKey, op ssh.Signer, target, msg string) error {
	t.Helper()
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User: "op", Auth: []ssh.AuthMethod{ssh.PublicKeys(op)}, HostKeyCallback: ssh.FixedHostKey(host),
	})
	if err != nil {
		return err
	}
	defer c.Close()
	conn, err := c.Dial("tcp", target)
	if err != nil {
		return err
	}
	defer conn.Close()
	io.WriteString(conn, msg)
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != msg {
		return errors.New("echo mismatch: " + string(got))
	}
	return nil
}

// TestAgentServesAndSurvivesRestart: the agent registers, serves circuits,
// comes back after the server is stopped and started on the same address,
// and a reload adds a port without reconnecting.
func TestAgentServesAndSurvivesRestart(t *testing.T) {
	l := newLab(t)
	srv := startServer(t, "127.0.0.1:0", l.hostKey, l.policy)
	target := echo(t)
	f, _ := agent.ParseForward("22:" + target)
	cfg := agent.Config{
		Server: srv.addr, Name: "dev42", Identity: l.identity,
		KnownHosts:        l.knownHosts(t, srv.addr, l.hostKey.PublicKey()),
		Forwards:          []agent.Forward{f},
		KeepaliveInterval: 100 * time.Millisecond, KeepaliveCount: 3,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	}
	a, out := runAgent(t, cfg)
	eventually(t, 5*time.Second, func() bool { return srv.connected("dev42") }, "the agent never registered")
	if err := roundTrip(t, srv.addr, l.hostKey.PublicKey(), l.opKey, "dev42:22", "first"); err != nil {
		t.Fatal(err)
	}

	srv.stop()
	eventually(t, 5*time.Second, func() bool { return out.has("waiting") }, "the agent did not notice the server going away")
	again := startServer(t, srv.addr, l.hostKey, l.policy)
	eventually(t, 5*time.Second, func() bool { return again.connected("dev42") }, "the agent did not come back after the restart")
	if err := roundTrip(t, again.addr, l.hostKey.PublicKey(), l.opKey, "dev42:22", "after restart"); err != nil {
		t.Fatal(err)
	}

	before, _ := again.board.Lookup("dev42")
	f80, _ := agent.ParseForward("80:" + target)
	cfg.Forwards = append(cfg.Forwards, f80)
	if err := a.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool {
		return roundTrip(t, again.addr, l.hostKey.PublicKey(), l.opKey, "dev42:80", "new port") == nil
	}, "the reload did not add port 80")
	// Only the forwards changed, so the connection must be the same one.
	if after, _ := again.board.Lookup("dev42"); !after.Connected || !after.Since.Equal(before.Since) {
		t.Fatalf("the reload reconnected: connected since %v, then %v", before.Since, after.Since)
	}
}

// TestAgentRefusesWrongHostKey: a server whose key is not the pinned one is
// never given the device's credentials' use, and says why.
func TestAgentRefusesWrongHostKey(t *testing.T) {
	l := newLab(t)
	srv := startServer(t, "127.0.0.1:0", l.hostKey, l.policy)
	impostor, _ := signer(t)
	cfg := agent.Config{
		Server: srv.addr, Name: "dev42", Identity: l.identity,
		KnownHosts: l.knownHosts(t, srv.addr, impostor.PublicKey()),
		BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
	}
	_, out := runAgent(t, cfg)
	eventually(t, 5*time.Second, func() bool { return out.has("server host key mismatch") }, "no mismatch logged")
	if srv.connected("dev42") {
		t.Fatal("the agent registered with a server whose key does not match")
	}
}

// TestAgentNeedsPinnedKey: without the server in known_hosts the agent
// refuses to start rather than trust on first use.
func TestAgentNeedsPinnedKey(t *testing.T) {
	l := newLab(t)
	other, _ := signer(t)
	_, err := agent.New(agent.Config{
		Server: "127.0.0.1:9", Name: "dev42", Identity: l.identity,
		KnownHosts: l.knownHosts(t, "192.0.2.1:2222", other.PublicKey()),
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "no host key for [127.0.0.1]:9") {
		t.Fatalf("New: %v", err)
	}
}
