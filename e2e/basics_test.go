package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// remoteCmd is what operators run on a device's sshd: "hi", then the sshd's
// view of the connection, whose last field is the sshd's port.
const remoteCmd = "echo hi; echo $SSH_CONNECTION"

// regexpAllocated matches what ssh -R 0:… prints once the server chose a port.
var regexpAllocated = regexp.MustCompile(`Allocated port (\d+) for remote forward`)

// reached checks that r is remoteCmd's output from the sshd on sshdPort.
func reached(t testing.TB, what string, r result, sshdPort int) {
	t.Helper()
	mustSucceed(t, what, r)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || lines[0] != "hi" {
		t.Fatalf("%s: want \"hi\" and $SSH_CONNECTION, got %v", what, r)
	}
	f := strings.Fields(lines[1])
	if len(f) != 4 || f[3] != strconv.Itoa(sshdPort) {
		t.Fatalf("%s: reached the sshd on port %v, want %d (SSH_CONNECTION %q)", what, f[len(f)-1:], sshdPort, lines[1])
	}
}

// startForwarder runs ssh -N -v FLAG SPEC pivot (-L or -D) and waits until
// it listens on 127.0.0.1:port.
func startForwarder(t testing.TB, cfg, flag string, port int, spec string) *proc {
	t.Helper()
	p := command("ssh "+flag, "ssh", "-F", cfg, "-N", "-v", "-o", "ExitOnForwardFailure=yes", flag, spec, "pivot").start(t)
	ready := fmt.Sprintf("Local forwarding listening on 127.0.0.1 port %d.", port)
	await(t, startTimeout, "ssh "+flag+" to listen", func() (bool, error) {
		if strings.Contains(p.stderr.String(), ready) {
			return true, nil
		}
		if p.exited() {
			return false, fmt.Errorf("ssh %s exited: %v\n%s", flag, p.err, tail(p.stderr.String(), 20))
		}
		return false, nil
	})
	return p
}

// randomFile writes n pseudo-random bytes to a new file in dir.
func randomFile(t testing.TB, dir, name string, n int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{byte(n), 1, 2, 3})
	buf := make([]byte, 1<<20)
	for left := n; left > 0; {
		chunk := buf[:min(left, int64(len(buf)))]
		r.Read(chunk)
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		left -= int64(len(chunk))
	}
	return path
}

// TestBasics reaches devices through the server with every stock client
// path: -J, -W, ProxyCommand, -L, -D, scp, sftp, rsync, and by name, alias,
// domain, case and an allocated port.
func TestBasics(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "scp", "sftp", "rsync", "curl", "nc")

	op := newKey(t, "operator")
	devKey := newKey(t, "dev42")
	devbKey := newKey(t, "devb")
	dynKey := newKey(t, "dyn")
	srv := startServer(t, serverOpts{
		authorizedKeys: []string{
			authLine(`access="initiate"`, op),
			authLine(`access="listen",hostname="dev42",alias="web1"`, devKey),
			authLine(`access="listen"`, devbKey),
			authLine(`access="listen",hostname="dyn"`, dynKey),
		},
		args: []string{"--domain", "example.test"},
	})
	sshdA := startSSHD(t, op)
	sshdB := startSSHD(t, op)
	srv.pinHost(t, "dev42", sshdA.hostKey)
	srv.pinHost(t, "devb", sshdB.hostKey)

	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the web server behind dev42, path %s\n", r.URL.Path)
	}))
	t.Cleanup(web.Close)
	webPort := web.Listener.Addr().(*net.TCPAddr).Port
	echo := echoService(t)

	// hostname= names the device, whatever user it logs in as.
	dev := launchDevice(t, srv, deviceOpts{key: devKey, user: "pi", name: "dev42",
		forwards: []string{fwd(22, sshdA.port), fwd(80, webPort), fwd(7, echo)}})
	dev.awaitRegistered(t)
	reg := srv.logsFrom(dev.mark, logMsg("device registered", "device", "dev42", "port", 22))[0]
	if _, ok := reg["bind_addr"]; !ok || !strings.HasPrefix(reg.str("source"), "127.0.0.1:") {
		t.Errorf("device registered: want bind_addr and source 127.0.0.1:PORT: %v", reg)
	}
	startDevice(t, srv, devbKey, "devb", fwd(22, sshdB.port))
	cfg := srv.sshConfig(t, op)

	t.Run("jump", func(t *testing.T) {
		mark := srv.mark()
		reached(t, "ssh -J pivot dev42", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), sshdA.port)
		e := srv.waitLogFrom(t, mark, logMsg("circuit", "device", "dev42", "port", 22, "result", "ok"), logTimeout)
		if e.str("operator") != op.fp || e.str("user") != "operator" {
			t.Errorf("circuit log: operator %q user %q, want %q and \"operator\": %v", e.str("operator"), e.str("user"), op.fp, e)
		}
		if e.int("bytes_to_device") <= 0 || e.int("bytes_from_device") <= 0 || e.int("duration_ms") < 0 {
			t.Errorf("circuit log: want positive byte counts and a duration: %v", e)
		}
		if _, ok := e["close"]; !ok {
			t.Errorf("circuit log: no close attribute: %v", e)
		}
	})

	t.Run("proxycommand-W", func(t *testing.T) {
		pc := "ProxyCommand=ssh -F " + cfg + " -W %h:%p pivot"
		reached(t, "ssh -o ProxyCommand='ssh -W %h:%p pivot' dev42", runSSH(t, cfg, "-o", pc, "dev42", remoteCmd), sshdA.port)
	})

	t.Run("W-raw", func(t *testing.T) {
		r := mustSucceed(t, "ssh -W dev42:7 pivot", run(t, strings.NewReader("ping\n"), runTimeout, "ssh", "-F", cfg, "-W", "dev42:7", "pivot"))
		if r.stdout != "ping\n" {
			t.Fatalf("ssh -W dev42:7 through the echo service: got %q, want \"ping\\n\"", r.stdout)
		}
	})

	t.Run("L", func(t *testing.T) {
		lport := freePort(t)
		startForwarder(t, cfg, "-L", lport, fmt.Sprintf("127.0.0.1:%d:dev42:22", lport))
		reached(t, "ssh -p LPORT through -L", runSSH(t, cfg, "-p", strconv.Itoa(lport), "-o", "HostKeyAlias=dev42", "127.0.0.1", remoteCmd), sshdA.port)
	})

	t.Run("D-socks5", func(t *testing.T) {
		sport := freePort(t)
		socks := fmt.Sprintf("127.0.0.1:%d", sport)
		startForwarder(t, cfg, "-D", sport, socks)
		for _, url := range []string{"http://dev42/a", "http://web1.example.test/b"} {
			r := mustSucceed(t, "curl via -D "+url, run(t, nil, runTimeout, "curl", "-sS", "--max-time", "20", "--socks5-hostname", socks, url))
			want := "hello from the web server behind dev42, path " + url[strings.LastIndex(url, "/"):]
			if strings.TrimSpace(r.stdout) != want {
				t.Errorf("curl %s via SOCKS: got %q, want %q", url, r.stdout, want)
			}
		}
		r := mustSucceed(t, "nc -X 5 via -D", run(t, strings.NewReader("ping\n"), runTimeout, "nc", "-N", "-X", "5", "-x", socks, "dev42", "7"))
		if r.stdout != "ping\n" {
			t.Errorf("nc -X 5 -x %s dev42 7: got %q, want \"ping\\n\"", socks, r.stdout)
		}
	})

	local := t.TempDir()
	remote := t.TempDir() // the device's sshd runs on this machine as this user
	src := randomFile(t, local, "src.bin", 1<<20)
	srcSum := sha256File(t, src)

	t.Run("scp", func(t *testing.T) {
		mustSucceed(t, "scp upload", run(t, nil, runTimeout, "scp", "-F", cfg, "-J", "pivot", src, "dev42:"+filepath.Join(remote, "scp.bin")))
		if got := sha256File(t, filepath.Join(remote, "scp.bin")); got != srcSum {
			t.Fatalf("scp upload: sha256 %s, want %s", got, srcSum)
		}
		back := filepath.Join(local, "scp-back.bin")
		mustSucceed(t, "scp download", run(t, nil, runTimeout, "scp", "-F", cfg, "-J", "pivot", "dev42:"+filepath.Join(remote, "scp.bin"), back))
		if got := sha256File(t, back); got != srcSum {
			t.Fatalf("scp download: sha256 %s, want %s", got, srcSum)
		}
	})

	t.Run("sftp", func(t *testing.T) {
		back := filepath.Join(local, "sftp-back.bin")
		batch := filepath.Join(local, "sftp.batch")
		script := fmt.Sprintf("put %s %s\nget %s %s\n", src, filepath.Join(remote, "sftp.bin"), filepath.Join(remote, "sftp.bin"), back)
		if err := os.WriteFile(batch, []byte(script), 0o600); err != nil {
			t.Fatal(err)
		}
		mustSucceed(t, "sftp -b", run(t, nil, runTimeout, "sftp", "-F", cfg, "-J", "pivot", "-b", batch, "dev42"))
		for _, p := range []string{filepath.Join(remote, "sftp.bin"), back} {
			if got := sha256File(t, p); got != srcSum {
				t.Fatalf("sftp: %s has sha256 %s, want %s", p, got, srcSum)
			}
		}
	})

	t.Run("rsync", func(t *testing.T) {
		tree := t.TempDir()
		files := map[string]string{"a.txt": "alpha\n", "sub/b.txt": "bravo\n", "sub/deeper/c.txt": strings.Repeat("c", 100000)}
		for name, content := range files {
			p := filepath.Join(tree, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dst := filepath.Join(remote, "rsync")
		mustSucceed(t, "rsync -e 'ssh -J pivot'", run(t, nil, runTimeout, "rsync", "-a", "-e", "ssh -F "+cfg+" -J pivot", tree+"/", "dev42:"+dst+"/"))
		for name, content := range files {
			got, err := os.ReadFile(filepath.Join(dst, name))
			if err != nil || string(got) != content {
				t.Errorf("rsync: %s: got %d bytes (%v), want %d", name, len(got), err, len(content))
			}
		}
	})

	t.Run("two-devices", func(t *testing.T) {
		reached(t, "ssh -J pivot devb", runSSH(t, cfg, "-J", "pivot", "devb", remoteCmd), sshdB.port)
		reached(t, "ssh -J pivot dev42", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), sshdA.port)
	})

	// Names are case-insensitive; ProxyJump lowercases, -W passes the name as written.
	t.Run("case-insensitive", func(t *testing.T) {
		reached(t, "ssh -J pivot DEV42", runSSH(t, cfg, "-J", "pivot", "DEV42", remoteCmd), sshdA.port)
		pc := "ProxyCommand=ssh -F " + cfg + " -W DEV42:22 pivot"
		reached(t, "ProxyCommand -W DEV42:22", runSSH(t, cfg, "-o", pc, "-o", "HostKeyAlias=dev42", "x", remoteCmd), sshdA.port)
		r := mustSucceed(t, "ssh -W Dev42:7 pivot", run(t, strings.NewReader("ping\n"), runTimeout, "ssh", "-F", cfg, "-W", "Dev42:7", "pivot"))
		if r.stdout != "ping\n" {
			t.Fatalf("ssh -W Dev42:7: got %q", r.stdout)
		}
	})

	t.Run("alias", func(t *testing.T) {
		reached(t, "ssh -J pivot web1", runSSH(t, cfg, "-J", "pivot", "-o", "HostKeyAlias=dev42", "web1", remoteCmd), sshdA.port)
	})

	t.Run("domain", func(t *testing.T) {
		reached(t, "ssh -J pivot dev42.example.test", runSSH(t, cfg, "-J", "pivot", "-o", "HostKeyAlias=dev42", "dev42.example.test", remoteCmd), sshdA.port)
		pc := "ProxyCommand=ssh -F " + cfg + " -W WEB1.Example.Test:22 pivot"
		reached(t, "ProxyCommand -W WEB1.Example.Test:22", runSSH(t, cfg, "-o", pc, "-o", "HostKeyAlias=dev42", "x", remoteCmd), sshdA.port)
	})

	t.Run("port-zero", func(t *testing.T) {
		dyn := launchDevice(t, srv, deviceOpts{key: dynKey, user: "dyn", forwards: []string{fwd(0, sshdA.port)}})
		dyn.awaitRegistered(t)
		var port string
		await(t, logTimeout, `ssh -R 0: to print "Allocated port N"`, func() (bool, error) {
			if m := regexpAllocated.FindStringSubmatch(dyn.stderr()); m != nil {
				port = m[1]
				return true, nil
			}
			return false, nil
		})
		if port == "0" {
			t.Fatalf("allocated port 0: %s", dyn.stderr())
		}
		if got := srv.logsFrom(dyn.mark, logMsg("device registered", "device", "dyn", "port", port)); len(got) == 0 {
			t.Errorf("no \"device registered\" line with port %s: %v", port, srv.logsFrom(dyn.mark, logMsg("device registered")))
		}
		reached(t, "ssh -J pivot -p "+port+" dyn", runSSH(t, cfg, "-J", "pivot", "-p", port, "-o", "HostKeyAlias=dev42", "dyn", remoteCmd), sshdA.port)
	})
}
