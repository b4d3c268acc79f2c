package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, m *Metrics, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(m.Handler(true))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCounts(t *testing.T) {
	m := New()
	m.Handshake(true)
	m.Handshake(false)
	m.AuthDenied("unknown-key")
	m.DeviceOnline(1)
	m.DeviceOnline(1)
	m.DeviceOnline(-1)
	m.CircuitOpened()
	m.CircuitOpened()
	m.CircuitClosed(100, 2000)
	m.CircuitRefused("no-device")
	m.Wake("answered", 40*time.Millisecond)
	m.Wake("timeout", 30*time.Second)

	code, body := scrape(t, m, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`switchboard_handshakes_total{result="ok"} 1`,
		`switchboard_handshakes_total{result="failed"} 1`,
		`switchboard_auth_denied_total{reason="unknown-key"} 1`,
		`switchboard_devices_connected 1`,
		`switchboard_circuits_open 1`,
		`switchboard_circuits_total{result="ok"} 2`,
		`switchboard_circuits_total{result="no-device"} 1`,
		`switchboard_relayed_bytes_total{direction="to_device"} 100`,
		`switchboard_relayed_bytes_total{direction="from_device"} 2000`,
		`switchboard_wakes_total{outcome="answered"} 1`,
		`switchboard_wakes_total{outcome="timeout"} 1`,
		`switchboard_wake_seconds_count 1`,
		`switchboard_wake_seconds_bucket{le="0.05"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code, _ := scrape(t, m, "/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/: %d", code)
	}
}

func TestPprofIsOptIn(t *testing.T) {
	srv := httptest.NewServer(New().Handler(false))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("/debug/pprof/ without --pprof: %d, want 404", resp.StatusCode)
	}
}
