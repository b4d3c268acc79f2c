package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logRecords decodes the JSON log lines in buf.
func logRecords(tb testing.TB, buf *bytes.Buffer) []map[string]any {
	tb.Helper()
	var recs []map[string]any
	dec := json.NewDecoder(buf)
	for dec.More() {
		var r map[string]any
		if err := dec.Decode(&r); err != nil {
			tb.Fatal(err)
		}
		recs = append(recs, r)
	}
	return recs
}

// writeFile writes content ($K placeholders expanded) to path.
func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(expand(tb, content)), 0o600); err != nil {
		tb.Fatal(err)
	}
}

func TestStoreMissingFile(t *testing.T) {
	var buf bytes.Buffer
	s := NewStore(filepath.Join(t.TempDir(), "authorized_keys"), slog.New(slog.NewJSONHandler(&buf, nil)))
	if p := s.Policy(); p == nil || p.Len() != 0 {
		t.Fatalf("policy before Load: %v", p)
	}
	p, err := s.Load()
	if err != nil || p == nil || p.Len() != 0 || s.Policy() != p {
		t.Fatalf("Load = %v, %v; want an empty current policy", p, err)
	}
	recs := logRecords(t, &buf)
	if len(recs) == 0 || recs[0]["level"] != "WARN" {
		t.Errorf("logs %v; want a warning first", recs)
	}
}

func TestStoreLoadLogsBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeFile(t, path, mixedFile+"\nno-pty,command=\"secret-command\",access=\"listen\" $K6\n")
	var buf bytes.Buffer
	s := NewStore(path, slog.New(slog.NewJSONHandler(&buf, nil)))
	p, err := s.Load()
	if err != nil || p.Len() != 4 {
		t.Fatalf("Load = %d entries, %v; want 4", p.Len(), err)
	}
	out := buf.String()
	var bad []float64
	var ignored, summary map[string]any
	for _, r := range logRecords(t, &buf) {
		switch r["msg"] {
		case "authorized_keys: bad line":
			if r["level"] != "WARN" || r["path"] != path || r["error"] == "" {
				t.Errorf("bad line record %v", r)
			}
			bad = append(bad, r["line"].(float64))
		case "authorized_keys: option ignored":
			ignored = r
		case "authorized_keys loaded":
			summary = r
		}
	}
	if len(bad) != 3 || bad[0] != 4 || bad[1] != 7 || bad[2] != 8 {
		t.Errorf("bad lines logged: %v; want 4, 7, 8", bad)
	}
	if ignored == nil || ignored["level"] != "INFO" || ignored["line"] != 11.0 || ignored["option"] != "no-pty,command" {
		t.Errorf("ignored-option record %v", ignored)
	}
	if summary == nil || summary["level"] != "INFO" || summary["entries"] != 4.0 || summary["bad_lines"] != 3.0 {
		t.Errorf("summary record %v", summary)
	}
	if strings.Contains(out, "secret-command") || strings.Contains(out, "AAAA") {
		t.Errorf("the log holds option values or key data:\n%s", out)
	}
}

func TestStoreUnreadableKeepsPrevious(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeFile(t, path, `access="listen" $K1`)
	s := NewStore(path, nil)
	before, err := s.Load()
	if err != nil || before.Len() != 1 {
		t.Fatal(before, err)
	}
	// A directory where the file was cannot be read, even by root.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Load(); err == nil || p != nil {
		t.Fatalf("Load = %v, %v; want an error", p, err)
	} else if !strings.HasPrefix(err.Error(), "policy: ") {
		t.Errorf("error %q lacks the package prefix", err)
	}
	if s.Policy() != before {
		t.Error("a failed Load replaced the policy")
	}
}

// watchStore starts s.Watch and returns a channel of reloaded policies; the test's cleanup
// stops Watch and waits for it to return.
func watchStore(t *testing.T, s *Store) <-chan *Policy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	s.watching = func() { close(ready) }
	reloads := make(chan *Policy)
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, func(p *Policy) {
			select {
			case reloads <- p:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch returned early: %v", err)
	}
	return reloads
}

// awaitPolicy returns the first reloaded policy with n entries, failing after a generous
// timeout (the debounce is 100ms).
func awaitPolicy(t *testing.T, s *Store, reloads <-chan *Policy, n int) *Policy {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case p := <-reloads:
			if p.Len() == n {
				if s.Policy() != p {
					t.Fatal("onReload got a policy that is not current")
				}
				return p
			}
		case <-timeout:
			t.Fatalf("no reload with %d entries; current policy has %d", n, s.Policy().Len())
		}
	}
}

func TestStoreWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "authorized_keys")
	writeFile(t, path, `access="listen" $K1`)
	s := NewStore(path, slog.New(slog.NewTextHandler(tWriter{t}, nil)))
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	reloads := watchStore(t, s)

	// Rewritten in place.
	writeFile(t, path, "access=\"listen\" $K1\naccess=\"listen\" $K2\n")
	awaitPolicy(t, s, reloads, 2)

	// Replaced by rename, as editors and mv do.
	tmp := filepath.Join(dir, ".authorized_keys.tmp")
	writeFile(t, tmp, "$K1\n$K2\n$K3\n")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	awaitPolicy(t, s, reloads, 3)

	// Bad lines are skipped; the good ones still apply.
	writeFile(t, path, "$K1\nnonsense\n$K2\nbogus $K3\n")
	p := awaitPolicy(t, s, reloads, 2)
	if e := p.Entries(); e[0].Line != 1 || e[1].Line != 3 {
		t.Errorf("entries on lines %d and %d; want 1 and 3", e[0].Line, e[1].Line)
	}

	// Removed: deny all.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	awaitPolicy(t, s, reloads, 0)
}

func TestStoreWatchCatchesChangeBeforeStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeFile(t, path, `$K1`)
	s := NewStore(path, nil)
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "$K1\n$K2\n") // after Load, before Watch: no event will tell of it
	awaitPolicy(t, s, watchStore(t, s), 2)
}

func TestStoreWatchWithoutLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authorized_keys")
	writeFile(t, path, `$K1`)
	s := NewStore(path, nil)
	awaitPolicy(t, s, watchStore(t, s), 1)
}

func TestStoreWatchMissingDirectory(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "no-such-dir", "authorized_keys"), nil)
	if err := s.Watch(context.Background(), nil); err == nil {
		t.Fatal("Watch of a missing directory returned nil")
	}
}

func TestStoreWatchStopsWithContext(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "authorized_keys"), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Watch(ctx, nil); err != nil {
		t.Fatalf("Watch = %v, want nil once ctx is done", err)
	}
}

// tWriter sends log output to the test log, where it shows only on failure.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimSuffix(b, []byte("\n"))))
	return len(b), nil
}
