package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRefusalSentences checks that each refused circuit reaches the operator's
// stock ssh (default LogLevel, through -J and -W) as one sentence naming the
// device, and is logged as a refused circuit.
func TestRefusalSentences(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	op := newKey(t, "operator")
	limited := newKey(t, "limited")
	globbed := newKey(t, "globbed")
	devKey := newKey(t, "dev42")
	soloKey := newKey(t, "solo")
	goneKey := newKey(t, "gone")
	neverKey := newKey(t, "never")
	srv := startServer(t, serverOpts{authorizedKeys: []string{
		authLine(`access="initiate"`, op),
		authLine(`access="initiate",permitopen="dev42:80"`, limited),
		authLine(`access="initiate",permitopen="dev*:*"`, globbed),
		authLine(`access="listen",hostname="dev42"`, devKey),
		authLine(`access="listen",hostname="solo"`, soloKey),
		authLine(`access="listen",hostname="gone"`, goneKey),
		authLine(`access="listen",hostname="dev99"`, neverKey),
	}})
	sshd := startSSHD(t, op, limited, globbed)
	srv.pinHost(t, "dev42,solo,gone,dev99,nosuch", sshd.hostKey)
	echo := echoService(t)
	closed := freePort(t) // nothing listens here: the device's connect is refused

	startDevice(t, srv, devKey, "dev42", fwd(22, sshd.port), fwd(80, echo), fwd(2200, closed))
	startDevice(t, srv, soloKey, "solo", fwd(22, sshd.port))
	beforeGone := time.Now().UTC().Add(-time.Second)
	gone := startDevice(t, srv, goneKey, "gone", fwd(22, sshd.port))
	mark := srv.mark()
	gone.kill()
	srv.waitLogFrom(t, mark, logMsg("device disconnected", "device", "gone"), logTimeout)

	q := regexp.QuoteMeta
	cases := []struct {
		name   string
		k      key
		target string
		port   int
		want   string // regexp for the whole sentence
	}{
		{"no device", op, "nosuch", 22, q(`switchboard: no device named "nosuch"`)},
		{"offline", op, "gone", 22, q(`switchboard: device "gone" is offline (last seen `) +
			`(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z), ([^()]*[0-9][^()]*) ago\)`},
		{"never seen", op, "dev99", 22, q(`switchboard: device "dev99" is offline (never seen)`)},
		{"port not exposed", op, "solo", 80, q(`switchboard: device "solo" does not expose port 80 (it exposes 22)`)},
		{"permitopen other port", limited, "dev42", 22, q(`switchboard: your key may not reach "dev42:22"`)},
		{"permitopen other device", globbed, "solo", 22, q(`switchboard: your key may not reach "solo:22"`)},
		{"listen-only key", devKey, "dev42", 22, q(`switchboard: your key may not reach "dev42:22"`)},
		{"target refused", op, "dev42", 2200, q(`switchboard: device "dev42" could not connect to its port 2200: `) + `[^\r\n]*Connection refused[^\r\n]*`},
	}
	cfgs := map[string]string{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, ok := cfgs[tc.k.name]
			if !ok {
				cfg = srv.sshConfig(t, tc.k)
				cfgs[tc.k.name] = cfg
			}
			port := strconv.Itoa(tc.port)
			for _, via := range []string{"-J", "-W"} {
				mark := srv.mark()
				var r result
				if via == "-J" {
					r = runSSH(t, cfg, "-J", "pivot", "-p", port, tc.target, "true")
				} else {
					r = run(t, strings.NewReader(""), runTimeout, "ssh", "-F", cfg, "-W", tc.target+":"+port, "pivot")
				}
				if r.code == 0 {
					t.Fatalf("%s %s:%d: want a failure, got %v", via, tc.target, tc.port, r)
				}
				// ssh prints "channel N: open failed: <reason code>: <our sentence>\r\n".
				m := mustMatch(t, `(?m)open failed: [^:\n]+: (`+tc.want+`)\r?$`, r.stderr, via+" stderr")
				if tc.name == "offline" {
					checkLastSeen(t, m[2], beforeGone)
				}
				e := srv.waitLogFrom(t, mark, logMsg("circuit", "device", tc.target, "port", tc.port, "result", "refused"), logTimeout)
				if e.str("refusal") != m[1] {
					t.Errorf("circuit log: refusal %q, want what ssh printed, %q", e.str("refusal"), m[1])
				}
				if e.str("operator") != tc.k.fp {
					t.Errorf("circuit log: operator %q, want %q", e.str("operator"), tc.k.fp)
				}
			}
		})
	}

	// What permitopen allows still works.
	t.Run("permitopen allows", func(t *testing.T) {
		for _, k := range []key{limited, globbed} {
			r := mustSucceed(t, k.name+" ssh -W dev42:80", run(t, strings.NewReader("ping\n"), runTimeout, "ssh", "-F", srv.sshConfig(t, k), "-W", "dev42:80", "pivot"))
			if r.stdout != "ping\n" {
				t.Errorf("%s: ssh -W dev42:80 (echo): got %q", k.name, r.stdout)
			}
		}
		reached(t, "globbed: ssh -J pivot dev42", runSSH(t, srv.sshConfig(t, globbed), "-J", "pivot", "dev42", remoteCmd), sshd.port)
	})
}

// checkLastSeen checks an offline sentence's time: after since, not in the future.
func checkLastSeen(t testing.TB, stamp string, since time.Time) {
	t.Helper()
	seen, err := time.Parse(time.RFC3339, stamp)
	if err != nil {
		t.Fatalf("last seen %q: %v", stamp, err)
	}
	if seen.Before(since.Truncate(time.Second)) || seen.After(time.Now().Add(time.Second)) {
		t.Errorf("last seen %v: want between %v and now", seen, since)
	}
}

// TestAuthDenied checks which keys the server lets in: access=, from=,
// expiry-time= and unknown keys are decided at authentication, and only
// public-key authentication is offered.
func TestAuthDenied(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")

	noAccess := newKey(t, "noaccess")
	fromOther := newKey(t, "fromother")
	expired := newKey(t, "expired")
	fromOK := newKey(t, "fromok")
	notExpired := newKey(t, "notexpired")
	unknown := newKey(t, "unknown")
	op := newKey(t, "operator")
	srv := startServer(t, serverOpts{authorizedKeys: []string{
		authLine(``, noAccess),
		authLine(`from="10.0.0.0/8",access="initiate"`, fromOther),
		authLine(`expiry-time="20200101",access="initiate"`, expired),
		authLine(`from="10.*,127.0.0.1",access="initiate"`, fromOK),
		authLine(`expiry-time="29991231235959Z",access="initiate"`, notExpired),
		authLine(`access="initiate"`, op),
	}})

	cases := []struct {
		name  string
		k     key
		args  []string
		allow bool
		line  int // authorized_keys line an accepted key matched
	}{
		{name: "no access option", k: noAccess},
		{name: "from mismatch", k: fromOther},
		{name: "expired", k: expired},
		{name: "unknown key", k: unknown},
		{name: "password and keyboard-interactive not offered", k: op,
			args: []string{"-o", "PreferredAuthentications=password,keyboard-interactive"}},
		{name: "from match", k: fromOK, allow: true, line: 4},
		{name: "not expired", k: notExpired, allow: true, line: 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mark := srv.mark()
			args := append(append([]string{}, tc.args...), "pivot", "help")
			r := runSSH(t, srv.sshConfig(t, tc.k), args...)
			if tc.allow {
				mustSucceed(t, "ssh pivot help", r)
				e := srv.waitLogFrom(t, mark, logMsg("auth", "result", "accept", "fingerprint", tc.k.fp), logTimeout)
				if e.int("line") != int64(tc.line) || e.str("user") != "operator" || !strings.HasPrefix(e.str("source"), "127.0.0.1:") || !strings.Contains(e.str("roles"), "initiate") {
					t.Errorf("auth accept: want line %d, user operator, source 127.0.0.1:PORT, roles with initiate: %v", tc.line, e)
				}
				return
			}
			if r.code != 255 {
				t.Errorf("want ssh to fail with 255, got %v", r)
			}
			mustMatch(t, `Permission denied \(publickey\)\.`, r.stderr, "ssh stderr")
			if tc.args != nil {
				return // no key was offered, so there is nothing to log about one
			}
			e := srv.waitLogFrom(t, mark, logMsg("auth", "result", "deny", "fingerprint", tc.k.fp), logTimeout)
			if e.str("reason") == "" || !strings.HasPrefix(e.str("source"), "127.0.0.1:") {
				t.Errorf("auth deny: want a reason and source 127.0.0.1:PORT: %v", e)
			}
		})
	}
}

// TestOperatorKeyCannotListen checks that an initiate-only key's tcpip-forward
// is refused, so ssh -R with ExitOnForwardFailure exits, and that it is logged.
func TestOperatorKeyCannotListen(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")

	op := newKey(t, "operator")
	srv := startServer(t, serverOpts{authorizedKeys: []string{authLine(`access="initiate"`, op)}})
	d := launchDevice(t, srv, deviceOpts{key: op, user: "dev77", forwards: []string{fwd(22, echoService(t))}})
	if code := d.proc.waitExit(t, startTimeout); code == 0 {
		t.Fatalf("ssh -R with an operator key exited 0, want a failure; stderr:\n%s", d.stderr())
	}
	mustContain(t, d.stderr(), "remote port forwarding failed for listen port 22", "device ssh stderr")
	e := srv.waitLogFrom(t, d.mark, logMsg("forward refused", "device", "dev77", "port", 22), logTimeout)
	if e.str("reason") == "" {
		t.Errorf("forward refused: no reason: %v", e)
	}
	if got := srv.logsFrom(d.mark, logMsg("device registered")); len(got) != 0 {
		t.Errorf("an operator key registered a device: %v", got)
	}
}
