package keepalive

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// peer answers pings until frozen; a frozen peer's sends block, as a write
// to a peer that stopped reading eventually does.
type peer struct {
	frozen  atomic.Bool
	release chan struct{}
	pings   atomic.Int32
}

func (p *peer) SendRequest(string, bool, []byte) (bool, []byte, error) {
	p.pings.Add(1)
	if p.frozen.Load() {
		<-p.release
		return false, nil, errors.New("connection closed")
	}
	return false, nil, nil // a failure reply still proves the peer alive
}

func TestDeadPeerIsReported(t *testing.T) {
	p := &peer{release: make(chan struct{})}
	deadAt := make(chan time.Time, 1)
	stop := Start(p, 10*time.Millisecond, 3, func() { deadAt <- time.Now() })
	defer stop()
	// Alive: several pings answered, not reported dead.
	for p.pings.Load() < 5 {
		select {
		case <-deadAt:
			t.Fatal("a live peer was reported dead")
		case <-time.After(5 * time.Millisecond):
		}
	}
	frozenAt := time.Now()
	p.frozen.Store(true)
	select {
	case at := <-deadAt:
		if d := at.Sub(frozenAt); d < 20*time.Millisecond {
			t.Fatalf("reported dead after %v, before interval × count could pass", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a frozen peer was never reported dead")
	}
	close(p.release) // the connection closes: blocked sends return
}

func TestStopSilences(t *testing.T) {
	p := &peer{release: make(chan struct{})}
	p.frozen.Store(true)
	var called atomic.Bool
	stop := Start(p, 5*time.Millisecond, 1, func() { called.Store(true) })
	stop()
	time.Sleep(50 * time.Millisecond) // nothing to await: proving something does NOT happen
	close(p.release)
	if called.Load() {
		t.Fatal("dead called after stop")
	}
}
