package board

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testWaker "wakes" a device by attaching it, as an agent dialling in would.
type testWaker struct {
	b     *Board
	calls atomic.Int32
	err   error
	ports []uint32 // registered by the woken device; nil: never comes
}

func (w *testWaker) Wake(ctx context.Context, name string) error {
	w.calls.Add(1)
	if w.err != nil {
		return w.err
	}
	if w.ports != nil {
		go func() {
			dev, _, _ := w.b.Attach([]string{name}, Identity{Fingerprint: "k"}, &fakeLink{})
			for _, p := range w.ports {
				dev.Listen("localhost", p)
			}
		}()
	}
	return nil
}

func (w *testWaker) State(context.Context, string) (WakeState, bool, error) {
	return WakeState{}, false, nil
}

func TestConcurrentOpensShareOneWake(t *testing.T) {
	b := New(nil)
	w := &testWaker{b: b, ports: []uint32{22, 80}}
	b.SetWaker(w, 5*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _, err := b.Open(context.Background(), "sleepy", 80, netip.AddrPort{})
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("open after wake: %v", err)
		}
	}
	if n := w.calls.Load(); n != 1 {
		t.Fatalf("%d wakes for 3 concurrent opens, want 1", n)
	}
}

func TestWakeOutcomes(t *testing.T) {
	seen := time.Date(2026, 11, 23, 14, 2, 11, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		waker *testWaker
		check func(error) bool
	}{
		{"not on demand", &testWaker{err: ErrNoWake}, func(err error) bool {
			var off *OfflineError
			return errors.As(err, &off) && off.LastSeen.IsZero()
		}},
		{"offline", &testWaker{err: &OfflineError{Name: "x", LastSeen: seen}}, func(err error) bool {
			var off *OfflineError
			return errors.As(err, &off) && off.LastSeen.Equal(seen)
		}},
		{"broker down", &testWaker{err: errors.New("not connected")}, func(err error) bool {
			var we *WakeError
			return errors.As(err, &we)
		}},
		{"never answers", &testWaker{}, func(err error) bool {
			var wt *WakeTimeoutError
			return errors.As(err, &wt) && wt.After == 50*time.Millisecond
		}},
		{"answers without the port", &testWaker{ports: []uint32{22}}, func(err error) bool {
			var np *NoPortError
			return errors.As(err, &np) && len(np.Exposed) == 1
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New(nil)
			tc.waker.b = b
			b.SetWaker(tc.waker, 50*time.Millisecond)
			_, _, err := b.Open(context.Background(), "x", 80, netip.AddrPort{})
			if !tc.check(err) {
				t.Fatalf("Open: %v", err)
			}
		})
	}
}
