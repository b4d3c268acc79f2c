package e2e

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestKeepaliveDropsStoppedDevice freezes a device's ssh (SIGSTOP: its TCP
// connection stays up, but nothing answers) and expects the server's
// keepalives to drop it, while a live device beside it stays.
func TestKeepaliveDropsStoppedDevice(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")

	op := newKey(t, "operator")
	frozenKey := newKey(t, "frozen")
	aliveKey := newKey(t, "alive")
	srv := startServer(t, serverOpts{
		authorizedKeys: []string{
			authLine(`access="initiate"`, op),
			authLine(`access="listen",hostname="dev42"`, frozenKey),
			authLine(`access="listen",hostname="alive"`, aliveKey),
		},
		args: []string{"--keepalive-interval", "1s", "--keepalive-count", "2"},
	})
	echo := echoService(t)
	frozen := startDevice(t, srv, frozenKey, "dev42", fwd(22, echo))
	alive := startDevice(t, srv, aliveKey, "alive", fwd(22, echo))

	mark := srv.mark()
	frozen.stop()
	t.Cleanup(frozen.cont)
	stopped := time.Now()
	e := srv.waitLogFrom(t, mark, logMsg("device disconnected", "device", "dev42"), 20*time.Second)
	t.Logf("dropped %v after SIGSTOP: %v", time.Since(stopped).Round(time.Millisecond), e)
	if !strings.Contains(e.str("reason"), "keepalive timeout") {
		t.Errorf("device disconnected: reason %q, want it to name the keepalive timeout: %v", e.str("reason"), e)
	}

	devs := lsJSON(t, srv.sshConfig(t, op))
	if d, ok := devs["dev42"]; !ok || d.State != "offline" {
		t.Errorf("ls --json after the drop: dev42 = %+v (listed %v), want state offline", d, ok)
	}
	if d := devs["alive"]; d.State != "connected" {
		t.Errorf("ls --json: the device that answers keepalives is %+v, want connected", d)
	}
	if got := srv.logsFrom(mark, logMsg("device disconnected", "device", "alive")); len(got) != 0 || alive.proc.exited() {
		t.Errorf("the live device was dropped too: %v", got)
	}
}

// readUntilClosed reads c until the server closes it; it fails the test if c
// is still open after limit, and returns what was read and when it closed.
func readUntilClosed(t testing.TB, c net.Conn, limit time.Duration) ([]byte, time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	data, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %v (read %q)", limit, data)
	}
	return data, time.Since(start)
}

// TestHandshakeTimeout opens TCP connections that never finish the SSH
// handshake and expects the server to close them after --handshake-timeout.
func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")
	op := newKey(t, "operator")
	srv := startServer(t, serverOpts{
		authorizedKeys: []string{authLine(`access="initiate"`, op)},
		args:           []string{"--handshake-timeout", "1s"},
	})

	for _, tc := range []struct{ name, send string }{
		{"silent", ""},
		{"version line only", "SSH-2.0-OpenSSH_9.2p1 stalled\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			data, after := readUntilClosed(t, c, 10*time.Second)
			t.Logf("closed after %v; read %q", after.Round(time.Millisecond), firstLine(data))
			if after < 900*time.Millisecond {
				t.Errorf("closed after %v, before the 1s handshake timeout", after)
			}
		})
	}
	// A real client finishes well within the timeout.
	mustSucceed(t, "ssh pivot help", runSSH(t, srv.sshConfig(t, op), "pivot", "help"))
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// TestUnauthLimitPerSource holds --max-unauth-per-source unauthenticated
// connections open and expects the next one from the same address to be
// closed at once, and a real client to get in again once they are gone.
func TestUnauthLimitPerSource(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")
	op := newKey(t, "operator")
	srv := startServer(t, serverOpts{
		authorizedKeys: []string{authLine(`access="initiate"`, op)},
		args:           []string{"--max-unauth-per-source", "3"},
	})
	cfg := srv.sshConfig(t, op)

	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The server's version line shows it has taken the connection in.
		c.SetReadDeadline(time.Now().Add(logTimeout))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(line, "SSH-2.0-") {
			t.Fatalf("unauthenticated connection %d: want the server's version line, got %q, %v", len(held)+1, line, err)
		}
		held = append(held, c)
	}

	extra, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_, after := readUntilClosed(t, extra, 5*time.Second)
	if after > 2*time.Second {
		t.Errorf("connection over the limit closed after %v, want at once", after)
	}
	for i, c := range held {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("connection %d within the limit was closed or answered: %v", i+1, err)
		}
	}
	if r := runSSH(t, cfg, "pivot", "help"); r.code == 0 {
		t.Errorf("ssh got in while 3 unauthenticated connections from its address were open: %v", r)
	}

	for _, c := range held {
		c.Close()
	}
	await(t, logTimeout, "ssh to get in once the held connections closed", func() (bool, error) {
		return runSSH(t, cfg, "pivot", "help").code == 0, nil
	})
}

// TestGracefulShutdown sends SIGTERM to a server with a device connected and
// expects exit status 0, the shutdown log line, and the device's ssh to end.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")
	devKey := newKey(t, "dev42")
	srv := startServer(t, serverOpts{authorizedKeys: []string{authLine(`access="listen"`, devKey)}})
	dev := startDevice(t, srv, devKey, "dev42", fwd(22, echoService(t)))

	mark := srv.mark()
	if code := srv.stop(t); code != 0 {
		t.Errorf("switchboard exited with status %d after SIGTERM, want 0", code)
	}
	if got := srv.logsFrom(mark, logMsg("shutdown")); len(got) == 0 {
		t.Errorf("no \"shutdown\" log line after SIGTERM; log tail:\n%s", tail(srv.proc.stderr.String(), 10))
	}
	dev.proc.waitExit(t, logTimeout)
	if c, err := net.Dial("tcp", srv.addr); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the server exited", srv.addr)
	}
}

// TestHostKeyCreatedOnceAndKept checks the host key file: created 0600 on the
// first start, and the same key after a restart on the same state dir.
func TestHostKeyCreatedOnceAndKept(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")
	op := newKey(t, "operator")
	first := startServer(t, serverOpts{authorizedKeys: []string{authLine(`access="initiate"`, op)}})
	fi, err := os.Stat(filepath.Join(first.stateDir, "ssh_host_ed25519_key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("ssh_host_ed25519_key has mode %v, want 0600", fi.Mode().Perm())
	}
	if code := first.stop(t); code != 0 {
		t.Fatalf("first server exited %d after SIGTERM", code)
	}
	second := startServer(t, serverOpts{stateDir: first.stateDir})
	if second.hostKey != first.hostKey {
		t.Errorf("host key changed across a restart: %q, then %q", first.hostKey, second.hostKey)
	}
	mustSucceed(t, "ssh pivot help after the restart", runSSH(t, second.sshConfig(t, op), "pivot", "help"))
}

// TestLastSeenSurvivesRestart: a device that left before the server
// restarted still reads "offline (last seen …)" afterwards, not "never seen",
// and the keepalive's reason for dropping it is in the log.
func TestLastSeenSurvivesRestart(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")

	op := newKey(t, "operator")
	devKey := newKey(t, "dev")
	keys := []string{
		authLine(`access="initiate"`, op),
		authLine(`access="listen",hostname="dev42"`, devKey),
	}
	first := startServer(t, serverOpts{authorizedKeys: keys})
	dev := startDevice(t, first, devKey, "dev42", fwd(22, echoService(t)))
	left := time.Now()
	mark := first.mark()
	dev.kill()
	first.waitLogFrom(t, mark, logMsg("device disconnected", "device", "dev42"), 20*time.Second)
	if code := first.stop(t); code != 0 {
		t.Fatalf("first server exited %d", code)
	}

	second := startServer(t, serverOpts{stateDir: first.stateDir})
	r := runSSH(t, second.sshConfig(t, op), "-J", "pivot", "dev42", "true")
	m := regexp.MustCompile(`switchboard: device "dev42" is offline \(last seen (\S+), [^)]+ ago\)`).FindStringSubmatch(r.stderr)
	if r.code == 0 || m == nil {
		t.Fatalf("after restart: exit %d, stderr %q; want the offline sentence with a last-seen time", r.code, r.stderr)
	}
	checkLastSeen(t, m[1], left)
}
