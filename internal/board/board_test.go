package board

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchboard-dev/switchboard/internal/circuit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeLink records what the board asks of a device's connection.
type fakeLink struct {
	mu     sync.Mutex
	opened []Forward
	closed bool
	err    error
}

func (l *fakeLink) OpenForward(ctx context.Context, f Forward, _ netip.AddrPort) (circuit.Stream, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	l.opened = append(l.opened, f)
	a, b := net.Pipe()
	b.Close()
	return pipeStream{a}, nil
}

func (l *fakeLink) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}

func (l *fakeLink) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

type pipeStream struct{ net.Conn }

func (p pipeStream) CloseWrite() error { return nil }

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestAttachTakeoverAndHeldNames(t *testing.T) {
	clk := &clock{time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	b := New(clk.now)
	keyA := Identity{Fingerprint: "SHA256:a", Remote: "192.0.2.1:1000"}
	keyB := Identity{Fingerprint: "SHA256:b", Remote: "192.0.2.2:1000"}

	first := &fakeLink{}
	dev1, displaced, err := b.Attach([]string{"dev42", "cam", "dev42"}, keyA, first)
	if err != nil || len(displaced) != 0 {
		t.Fatalf("first attach: %v, displaced %d", err, len(displaced))
	}
	if got := dev1.Names(); len(got) != 2 || got[0] != "dev42" || got[1] != "cam" {
		t.Fatalf("names %v, want [dev42 cam]", got)
	}

	// Another key may not take either name, and nothing changes.
	var held *HeldError
	if _, _, err := b.Attach([]string{"other", "cam"}, keyB, &fakeLink{}); !errors.As(err, &held) || held.Name != "cam" {
		t.Fatalf("attach by another key: %v, want HeldError for cam", err)
	}
	if _, ok := b.Lookup("other"); ok {
		t.Fatal("a refused attach registered a name")
	}

	// The same key takes both names over and hangs up the old link.
	clk.t = clk.t.Add(time.Minute)
	second := &fakeLink{}
	dev2, displaced, err := b.Attach([]string{"dev42", "cam"}, keyA, second)
	if err != nil || len(displaced) != 1 || displaced[0] != dev1 {
		t.Fatalf("takeover: err %v, displaced %v", err, displaced)
	}
	if !first.isClosed() {
		t.Fatal("the displaced link was not closed")
	}
	// The old connection's handler detaches later; that must not remove
	// the new device.
	b.Detach(dev1)
	if info, ok := b.Lookup("cam"); !ok || !info.Connected || info.Since != clk.t {
		t.Fatalf("after stale detach: %+v ok=%v", info, ok)
	}

	clk.t = clk.t.Add(time.Hour)
	b.Detach(dev2)
	info, ok := b.Lookup("dev42")
	if !ok || info.Connected || !info.Since.Equal(clk.t) {
		t.Fatalf("after detach: %+v ok=%v, want offline since %v", info, ok, clk.t)
	}
	if _, _, err := b.Open(context.Background(), "dev42", 22, netip.AddrPort{}); !errors.As(err, new(*OfflineError)) {
		t.Fatalf("open offline device: %v", err)
	}
	var off *OfflineError
	if _, _, err := b.Open(context.Background(), "never", 22, netip.AddrPort{}); !errors.As(err, &off) || !off.LastSeen.IsZero() {
		t.Fatalf("open unknown device: %v", err)
	}
}

func TestListenAndOpen(t *testing.T) {
	b := New(nil)
	link := &fakeLink{}
	dev, _, err := b.Attach([]string{"dev1", "alias1"}, Identity{Fingerprint: "k"}, link)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := dev.Listen("localhost", 22); err != nil || p != 22 {
		t.Fatalf("listen 22: %d %v", p, err)
	}
	if _, err := dev.Listen("", 22); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("second listen on 22: %v", err)
	}
	p1, _ := dev.Listen("", 0)
	p2, _ := dev.Listen("", 0)
	if p1 != firstDynamicPort || p2 != firstDynamicPort+1 {
		t.Fatalf("allocated %d, %d", p1, p2)
	}

	s, got, err := b.Open(context.Background(), "alias1", 22, netip.MustParseAddrPort("192.0.2.9:5555"))
	if err != nil || got != dev {
		t.Fatalf("open by alias: %v", err)
	}
	s.Close()
	if link.opened[0] != (Forward{Port: 22, BindAddr: "localhost"}) {
		t.Fatalf("forward %+v: the bind address must be echoed as requested", link.opened[0])
	}

	var np *NoPortError
	if _, _, err := b.Open(context.Background(), "dev1", 80, netip.AddrPort{}); !errors.As(err, &np) || len(np.Exposed) != 3 {
		t.Fatalf("open port 80: %v", err)
	}
	if !dev.Cancel(22) || dev.Cancel(22) {
		t.Fatal("cancel should succeed once")
	}

	link.err = errors.New("channel refused")
	if _, _, err := b.Open(context.Background(), "dev1", p1, netip.AddrPort{}); !errors.Is(err, link.err) {
		t.Fatalf("open with failing link: %v", err)
	}

	devs := b.Devices()
	if len(devs) != 1 || devs[0].Name != "dev1" || len(devs[0].Aliases) != 1 {
		t.Fatalf("devices %+v", devs)
	}
}
