package agent

import (
	"strings"
	"testing"
	"time"
)

var forwardCases = []struct {
	in   string
	want Forward
	ok   bool
}{
	{"22:127.0.0.1:22", Forward{22, "127.0.0.1:22"}, true},
	{"127.0.0.1:22", Forward{22, "127.0.0.1:22"}, true},
	{"80:localhost:8080", Forward{80, "localhost:8080"}, true},
	{"2222:[::1]:22", Forward{2222, "[::1]:22"}, true},
	{"[::1]:22", Forward{22, "[::1]:22"}, true},
	{"0:127.0.0.1:22", Forward{}, false},
	{"22:127.0.0.1:0", Forward{}, false},
	{"70000:127.0.0.1:22", Forward{}, false},
	{"22", Forward{}, false},
	{":22", Forward{}, false},
	{"", Forward{}, false},
	{"22:127.0.0.1:ssh", Forward{}, false},
}

func TestParseForward(t *testing.T) {
	for _, tc := range forwardCases {
		got, err := ParseForward(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseForward(%q) = %+v, %v; want %+v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParseForward(f *testing.F) {
	for _, tc := range forwardCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := ParseForward(s)
		if err != nil {
			return
		}
		if fw.VPort == 0 || fw.VPort > 65535 {
			t.Fatalf("%q: virtual port %d", s, fw.VPort)
		}
		// What String prints must parse back to the same forward.
		again, err := ParseForward(fw.String())
		if err != nil || again != fw {
			t.Fatalf("%q → %q → %+v, %v", s, fw.String(), again, err)
		}
	})
}

func TestParseConfig(t *testing.T) {
	good := `# written by switchboard enroll
server: "pivot.example.com:2222"
name: "dev42"
identity: "/etc/switchboard/id_ed25519"
known_hosts: "/etc/switchboard/known_hosts"
forwards:
  - "22:127.0.0.1:22"
  - "80:127.0.0.1:8080"
keepalive_interval: 20s
`
	c, err := ParseConfig([]byte(good), "agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "pivot.example.com:2222" || c.Name != "dev42" || len(c.Forwards) != 2 ||
		c.Forwards[1] != (Forward{80, "127.0.0.1:8080"}) || c.KeepaliveInterval != 20*time.Second {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil || c.BackoffMax != DefaultBackoffMax {
		t.Fatalf("validate: %v %+v", err, c)
	}
	for _, bad := range []struct{ yaml, want string }{
		{"sever: x:1\n", "field sever not found"},
		{"forwards: [\"nope\"]\n", `forward "nope"`},
		{"keepalive_interval: soon\n", "line 1"},
		{"server: [1, 2\n", "agent.yaml"},
	} {
		if _, err := ParseConfig([]byte(bad.yaml), "agent.yaml"); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error mentioning %q", bad.yaml, err, bad.want)
		}
	}
	if _, err := ParseConfig(nil, "empty.yaml"); err != nil {
		t.Errorf("empty file: %v", err)
	}
	var empty Config
	if err := empty.Validate(); err == nil || !strings.Contains(err.Error(), "--server") {
		t.Errorf("empty config validated: %v", err)
	}
	dup := Config{Server: "a:1", Name: "n", Identity: "i", KnownHosts: "k",
		Forwards: []Forward{{22, "a:1"}, {22, "b:2"}}}
	if err := dup.Validate(); err == nil {
		t.Error("duplicate virtual port accepted")
	}
}
