package broker

import (
	"strings"
	"testing"

	"github.com/switchboard-dev/switchboard/internal/wake"
)

var testACL = acl{topics: wake.Topics{Prefix: "switchboard"}, server: DefaultServerIdentity}

// aclCases seeds FuzzACL too.
var aclCases = []struct {
	identity, topic string
	write, want     bool
}{
	// A device: its own wake topic to read, its own state to write, exactly.
	{"dev1", "switchboard/dev1/wake", false, true},
	{"dev1", "switchboard/dev1/state", true, true},
	{"dev1", "switchboard/dev1/wake", true, false},
	{"dev1", "switchboard/dev1/state", false, false},
	{"dev1", "switchboard/dev2/wake", false, false},
	{"dev1", "switchboard/dev2/state", true, false},
	{"dev1", "switchboard/+/wake", false, false},
	{"dev1", "switchboard/dev1/#", false, false},
	{"dev1", "switchboard/#", false, false},
	{"dev1", "#", false, false},
	{"dev1", "$SYS/#", false, false},
	{"dev1", "switchboard/dev1/wake/x", false, false},
	{"dev1", "switchboard/dev1", true, false},
	{"dev1", "", true, false},
	{"dev1", "other/dev1/wake", false, false},
	{"a.b-c_d", "switchboard/a.b-c_d/state", true, true},
	// Names that could escape their topics, or are not canonical.
	{"Dev1", "switchboard/Dev1/state", true, false},
	{"dev/1", "switchboard/dev/1/state", true, false},
	{"+", "switchboard/+/wake", false, false},
	{"#", "switchboard/#/state", true, false},
	{"", "switchboard//state", true, false},
	{"..", "switchboard/../state", true, false},
	{strings.Repeat("a", 64), "switchboard/" + strings.Repeat("a", 64) + "/state", true, false},
	// The server: anything under the prefix, nothing else.
	{"switchboard-server", "switchboard/dev1/wake", true, true},
	{"switchboard-server", "switchboard/dev1/state", false, true},
	{"switchboard-server", "switchboard/+/state", false, true},
	{"switchboard-server", "switchboard/#", false, true},
	{"switchboard-server", "#", false, false},
	{"switchboard-server", "$SYS/broker/uptime", false, false},
	{"switchboard-server", "switchboardx/dev1/wake", true, false},
	{"switchboard-server", "switchboard", true, false},
}

func TestACL(t *testing.T) {
	for _, tc := range aclCases {
		if got := testACL.allow(tc.identity, tc.topic, tc.write); got != tc.want {
			t.Errorf("allow(%q, %q, write=%v) = %v, want %v", tc.identity, tc.topic, tc.write, got, tc.want)
		}
	}
	for id, want := range map[string]bool{"dev1": true, "switchboard-server": true, "Dev1": false, "a/b": false, "": false, ".a": false, "a.": false} {
		if got := testACL.known(id); got != want {
			t.Errorf("known(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	for p, want := range map[string]bool{
		"switchboard": true, "acme/switchboard": true,
		"": false, "$SYS": false, "a/+": false, "a/#": false, "a//b": false, "/a": false, "a/": false,
	} {
		if got := validPrefix(p); got != want {
			t.Errorf("validPrefix(%q) = %v, want %v", p, got, want)
		}
	}
}

// FuzzACL checks the acl's promise: a device reaches exactly its two
// topics, and nobody reaches a topic outside the prefix.
func FuzzACL(f *testing.F) {
	for _, tc := range aclCases {
		f.Add(tc.identity, tc.topic, tc.write)
	}
	f.Fuzz(func(t *testing.T, identity, topic string, write bool) {
		ok := testACL.allow(identity, topic, write)
		if !ok {
			return
		}
		if !strings.HasPrefix(topic, "switchboard/") {
			t.Fatalf("%q may use %q, outside the prefix", identity, topic)
		}
		if identity == testACL.server {
			return
		}
		want := testACL.topics.Wake(identity)
		if write {
			want = testACL.topics.State(identity)
		}
		if topic != want || strings.ContainsAny(identity, "/+#") {
			t.Fatalf("device %q may use %q (write=%v)", identity, topic, write)
		}
	})
}
