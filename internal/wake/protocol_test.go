package wake

import (
	"encoding/json"
	"strings"
	"testing"
)

var messageCases = []struct {
	in string
	ok bool
}{
	{`{"v":1,"id":"abcdEFGH1234","server":"pivot.example.com:2222","expires":"2026-11-23T14:02:41Z"}`, true},
	{`{"v":1,"id":"abcdEFGH1234","server":"[2001:db8::1]:2222","expires":"2026-11-23T14:02:41Z"}`, true},
	{`{"v":2,"id":"abcdEFGH1234","server":"p:1","expires":"2026-11-23T14:02:41Z"}`, false},
	{`{"v":1,"id":"short","server":"p:1","expires":"2026-11-23T14:02:41Z"}`, false},
	{`{"v":1,"id":"abcdEFGH/234","server":"p:1","expires":"2026-11-23T14:02:41Z"}`, false},
	{`{"v":1,"id":"abcdEFGH1234","server":"nopport","expires":"2026-11-23T14:02:41Z"}`, false},
	{`{"v":1,"id":"abcdEFGH1234","server":":22","expires":"2026-11-23T14:02:41Z"}`, false},
	{`{"v":1,"id":"abcdEFGH1234","server":"p:1"}`, false},
	{`{"v":1,"id":"abcdEFGH1234","server":"p:1","expires":"tomorrow"}`, false},
	{`{"v":1,"id":"abcdEFGH1234","server":"p:1","expires":"2026-11-23T14:02:41Z","extra":1}`, false},
	{`{"v":1,"id":"abcdEFGH1234","server":"p:1","expires":"2026-11-23T14:02:41Z"} {}`, false},
	{`not json`, false},
	{``, false},
}

func TestParseMessage(t *testing.T) {
	for _, tc := range messageCases {
		if _, err := ParseMessage([]byte(tc.in)); (err == nil) != tc.ok {
			t.Errorf("ParseMessage(%s): %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
	if _, err := ParseMessage([]byte(`{"v":1,"id":"` + strings.Repeat("a", 2000) + `"}`)); err == nil {
		t.Error("a 2 KB payload was accepted")
	}
}

var stateCases = []struct {
	in string
	ok bool
}{
	{`{"v":1,"state":"asleep","since":"2026-11-23T14:02:11Z","agent":"v1.2.3"}`, true},
	{`{"v":1,"state":"offline","since":"2026-11-23T14:02:11Z"}`, true},
	{`{"v":1,"state":"dreaming","since":"2026-11-23T14:02:11Z"}`, false},
	{`{"v":1,"state":"asleep"}`, false},
	{`{"v":0,"state":"asleep","since":"2026-11-23T14:02:11Z"}`, false},
	{`[]`, false},
}

func TestParseState(t *testing.T) {
	for _, tc := range stateCases {
		if _, err := ParseState([]byte(tc.in)); (err == nil) != tc.ok {
			t.Errorf("ParseState(%s): %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestTopics(t *testing.T) {
	if got := (Topics{}).Wake("dev42"); got != "switchboard/dev42/wake" {
		t.Errorf("default wake topic %q", got)
	}
	if got := (Topics{Prefix: "fleet/eu"}).State("dev42"); got != "fleet/eu/dev42/state" {
		t.Errorf("state topic %q", got)
	}
}

// FuzzParse feeds any bytes to both parsers: no panic, and whatever is
// accepted survives a round trip through JSON unchanged.
func FuzzParse(f *testing.F) {
	for _, tc := range messageCases {
		f.Add([]byte(tc.in))
	}
	for _, tc := range stateCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseMessage(b); err == nil {
			out, _ := json.Marshal(m)
			again, err := ParseMessage(out)
			if err != nil || again.ID != m.ID || again.Server != m.Server || !again.Expires.Equal(m.Expires) {
				t.Fatalf("message round trip: %s → %s: %v", b, out, err)
			}
		}
		if s, err := ParseState(b); err == nil {
			out, _ := json.Marshal(s)
			again, err := ParseState(out)
			if err != nil || again.State != s.State || !again.Since.Equal(s.Since) {
				t.Fatalf("state round trip: %s → %s: %v", b, out, err)
			}
		}
	})
}
