package e2e

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetrics scrapes a real server's --metrics endpoint after real
// circuits, a refusal and a denied key: the counts match what happened, the
// profiles are served with --pprof, and no device name appears anywhere.
func TestMetrics(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")
	op := newKey(t, "operator")
	devKey := newKey(t, "dev")
	stranger := newKey(t, "stranger")
	srv := startServer(t, serverOpts{
		authorizedKeys: []string{
			authLine(`access="initiate"`, op),
			authLine(`access="listen",hostname="metricsdev"`, devKey),
		},
		args: []string{"--metrics", "127.0.0.1:0", "--pprof"},
	})
	addr := srv.waitLog(t, logMsg("metrics listening"), logTimeout).str("addr")
	startDevice(t, srv, devKey, "metricsdev", fwd(22, echoService(t)))

	cfg := srv.sshConfig(t, op)
	for range 2 {
		r := run(t, strings.NewReader("hello"), runTimeout, "ssh", "-F", cfg, "-W", "metricsdev:22", "pivot")
		if r.code != 0 || r.stdout != "hello" {
			t.Fatalf("circuit: %v", r)
		}
	}
	if r := run(t, strings.NewReader(""), runTimeout, "ssh", "-F", cfg, "-W", "nosuch:22", "pivot"); r.code == 0 {
		t.Fatalf("a circuit to an unknown device succeeded: %v", r)
	}
	if r := runSSH(t, srv.sshConfig(t, stranger), "pivot", "ls"); r.code == 0 {
		t.Fatalf("an unknown key got in: %v", r)
	}

	get := func(path string) (int, string) {
		t.Helper()
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	value := func(body, series string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("/metrics has no %s", series)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	// The circuits' own log lines come when they end: await them, then read.
	await(t, logTimeout, "the circuits to be counted", func() (bool, error) {
		_, body := get("/metrics")
		return strings.Contains(body, `switchboard_circuits_total{result="ok"} 2`), nil
	})
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for series, want := range map[string]float64{
		`switchboard_devices_connected`:                          1,
		`switchboard_circuits_open`:                              0,
		`switchboard_circuits_total{result="ok"}`:                2,
		`switchboard_circuits_total{result="no-device"}`:         1,
		`switchboard_relayed_bytes_total{direction="to_device"}`: 10,
	} {
		if got := value(body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if value(body, `switchboard_auth_denied_total{reason="unknown-key"}`) < 1 {
		t.Error("the stranger's key was not counted as denied")
	}
	if value(body, `switchboard_handshakes_total{result="ok"}`) < 4 {
		t.Error("fewer successful handshakes counted than made")
	}
	if strings.Contains(body, "metricsdev") {
		t.Error("a device name appears in /metrics: metrics must have no per-device label")
	}
	if code, _ := get("/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ with --pprof: %d", code)
	}
}
