package e2e

import (
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// lsDevice is one object of `ls --json`.
type lsDevice struct {
	Name    string        `json:"name"`
	Aliases []string      `json:"aliases"`
	Ports   []json.Number `json:"ports"`
	State   string        `json:"state"`
	Since   string        `json:"since"`
	Remote  string        `json:"remote"`
}

// lsJSON runs `ls --json` on the server and returns the devices by lower-case name.
func lsJSON(t testing.TB, cfg string) map[string]lsDevice {
	t.Helper()
	return lsJSONIn(t, "", cfg)
}

// lsJSONIn is lsJSON with the operator's ssh inside network namespace ns.
func lsJSONIn(t testing.TB, ns, cfg string) map[string]lsDevice {
	t.Helper()
	r := mustSucceed(t, "ssh pivot ls --json", runIn(t, ns, nil, runTimeout, "ssh", "-F", cfg, "pivot", "ls", "--json"))
	var list []lsDevice
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	if err := dec.Decode(&list); err != nil {
		t.Fatalf("ls --json: want a JSON array of {name, aliases, ports, state, since, remote}: %v\n%s", err, r.stdout)
	}
	out := map[string]lsDevice{}
	for _, d := range list {
		out[strings.ToLower(d.Name)] = d
	}
	return out
}

// TestSessionCommands runs the server's own commands over a session channel.
func TestSessionCommands(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")

	op := newKey(t, "operator")
	limited := newKey(t, "limited")
	devKey := newKey(t, "dev42")
	devbKey := newKey(t, "devb")
	neverKey := newKey(t, "never")
	srv := startServer(t, serverOpts{authorizedKeys: []string{
		authLine(`access="initiate"`, op),
		authLine(`access="initiate",permitopen="dev42:*"`, limited),
		authLine(`access="listen",hostname="dev42",alias="web1"`, devKey),
		authLine(`access="listen"`, devbKey),
		authLine(`access="listen",hostname="dev99"`, neverKey),
	}})
	echo := echoService(t)
	before := time.Now().Add(-time.Second)
	startDevice(t, srv, devKey, "dev42", fwd(22, echo), fwd(80, echo))
	startDevice(t, srv, devbKey, "devb", fwd(22, echo))
	cfg := srv.sshConfig(t, op)

	t.Run("ls", func(t *testing.T) {
		r := mustSucceed(t, "ssh pivot ls", runSSH(t, cfg, "pivot", "ls"))
		lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
		if want := []string{"NAME", "ALIASES", "PORTS", "STATE", "SINCE", "REMOTE"}; !slices.Equal(strings.Fields(lines[0]), want) {
			t.Fatalf("ls header: got %q, want the columns %v", lines[0], want)
		}
		rows := map[string]string{}
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) > 0 {
				rows[f[0]] = l
			}
		}
		for name, wants := range map[string][]string{
			"dev42": {"web1", "22", "80", "connected", "127.0.0.1:"},
			"devb":  {"22", "connected", "127.0.0.1:"},
			"dev99": {"offline"},
		} {
			row, ok := rows[name]
			if !ok {
				t.Errorf("ls: no row for %s:\n%s", name, r.stdout)
				continue
			}
			for _, w := range wants {
				if !strings.Contains(row, w) {
					t.Errorf("ls: row %q lacks %q", row, w)
				}
			}
		}
	})

	t.Run("ls --json", func(t *testing.T) {
		devs := lsJSON(t, cfg)
		if len(devs) != 3 {
			t.Errorf("ls --json: want dev42, devb and dev99, got %+v", devs)
		}
		d := devs["dev42"]
		if d.Name != "dev42" || !slices.Equal(d.Aliases, []string{"web1"}) || d.State != "connected" {
			t.Errorf("ls --json: dev42 = %+v, want name dev42, aliases [web1], state connected", d)
		}
		var ports []string
		for _, p := range d.Ports {
			ports = append(ports, p.String())
		}
		slices.Sort(ports)
		if !slices.Equal(ports, []string{"22", "80"}) {
			t.Errorf("ls --json: dev42 ports %v, want 22 and 80", ports)
		}
		since, err := time.Parse(time.RFC3339, d.Since)
		if err != nil || since.Before(before.Truncate(time.Second)) || since.After(time.Now().Add(time.Second)) {
			t.Errorf("ls --json: dev42 since %q (%v): want an RFC 3339 time during this test", d.Since, err)
		}
		if host, _, err := net.SplitHostPort(d.Remote); err != nil || host != "127.0.0.1" {
			t.Errorf("ls --json: dev42 remote %q, want 127.0.0.1:PORT", d.Remote)
		}
		if d := devs["devb"]; d.State != "connected" || len(d.Aliases) != 0 {
			t.Errorf("ls --json: devb = %+v, want connected without aliases", d)
		}
		if d := devs["dev99"]; d.State != "offline" {
			t.Errorf("ls --json: dev99 (reserved, never connected) = %+v, want offline", d)
		}
	})

	t.Run("ls lists only what permitopen allows", func(t *testing.T) {
		devs := lsJSON(t, srv.sshConfig(t, limited))
		if _, ok := devs["dev42"]; !ok || len(devs) != 1 {
			t.Errorf("ls --json with permitopen=\"dev42:*\": got %+v, want dev42 only", devs)
		}
	})

	t.Run("status", func(t *testing.T) {
		for _, name := range []string{"dev42", "DEV42", "web1"} {
			r := mustSucceed(t, "ssh pivot status "+name, runSSH(t, cfg, "pivot", "status", name))
			for _, w := range []string{"dev42", "connected", "22", "80"} {
				mustContain(t, r.stdout, w, "status "+name)
			}
		}
		r := runSSH(t, cfg, "pivot", "status", "nosuch")
		if r.code != 1 || !strings.Contains(r.stderr, "nosuch") || r.stdout != "" {
			t.Errorf("status nosuch: want exit status 1 and a message naming nosuch on stderr, got %v", r)
		}
	})

	t.Run("help", func(t *testing.T) {
		r := mustSucceed(t, "ssh pivot help", runSSH(t, cfg, "pivot", "help"))
		for _, w := range []string{"ls", "status", "help"} {
			mustContain(t, r.stdout, w, "help")
		}
		// A shell request (no command) prints the help too.
		sh := run(t, strings.NewReader(""), runTimeout, "ssh", "-F", cfg, "-T", "pivot")
		for _, w := range []string{"ls", "status", "help"} {
			mustContain(t, sh.stdout, w, "shell request")
		}
	})

	t.Run("unknown command", func(t *testing.T) {
		r := runSSH(t, cfg, "pivot", "frobnicate")
		if r.code == 0 || strings.TrimSpace(r.stderr) == "" {
			t.Errorf("frobnicate: want a non-zero exit and a message on stderr, got %v", r)
		}
	})

	t.Run("device key gets no session", func(t *testing.T) {
		r := runSSH(t, srv.sshConfig(t, devKey), "pivot", "ls")
		if r.code == 0 || r.stdout != "" {
			t.Errorf("ls with a device key: want a failure and no output, got %v", r)
		}
	})
}
