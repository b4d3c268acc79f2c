package board

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Waker asks an absent device to connect now. The board declares it; the
// wake package implements it over MQTT.
type Waker interface {
	// Wake asks name to connect and returns once it has been asked. It
	// returns ErrNoWake if name is not an on-demand device, and an
	// *OfflineError if the device is known to be offline.
	Wake(ctx context.Context, name string) error
	// State reports what an on-demand device last said of itself; ok is
	// false if name is not an on-demand device.
	State(ctx context.Context, name string) (st WakeState, ok bool, err error)
}

// WakeState is what an on-demand device last published about itself.
type WakeState struct {
	State string // asleep, connecting, connected or offline
	Since time.Time
	Agent string
}

// ErrNoWake means the name is not an on-demand device.
var ErrNoWake = errors.New("board: not an on-demand device")

// WakeTimeoutError says a woken device did not register within the wake
// timeout.
type WakeTimeoutError struct {
	Name  string
	After time.Duration
}

func (e *WakeTimeoutError) Error() string {
	return fmt.Sprintf("board: device %q did not answer the wake-up within %s", e.Name, e.After)
}

// WakeError says the device could not be asked to wake.
type WakeError struct {
	Name string
	Err  error
}

func (e *WakeError) Error() string { return fmt.Sprintf("board: wake %q: %v", e.Name, e.Err) }
func (e *WakeError) Unwrap() error { return e.Err }

// portGrace is how long a woken device that has registered may take to
// register the port asked for: an agent registers its forwards one after
// the other, milliseconds apart.
const portGrace = 2 * time.Second

// Wake outcomes, as reported to a WakeObserver.
const (
	WakeAnswered    = "answered"
	WakeTimeout     = "timeout"
	WakeNotOnDemand = "not-on-demand"
	WakeOffline     = "offline"
	WakeFailed      = "failed"
)

// SetWakeObserver has fn told the outcome of every wake-up the board sends
// (once per wake-up, however many circuits share it) and, when answered,
// how long the device took to be ready. Call it before the board is used.
func (b *Board) SetWakeObserver(fn func(outcome string, took time.Duration)) { b.wakeObserver = fn }

// SetWaker lets the board wake absent devices, waiting up to timeout for
// them to register. Call it before the board is used.
func (b *Board) SetWaker(w Waker, timeout time.Duration) {
	b.waker, b.wakeTimeout = w, timeout
}

// CanWake reports whether Open may wait for a wake-up, and for how long.
func (b *Board) CanWake() (bool, time.Duration) { return b.waker != nil, b.wakeTimeout }

// WakeState asks the waker what an on-demand device last said of itself.
func (b *Board) WakeState(ctx context.Context, name string) (WakeState, bool, error) {
	if b.waker == nil {
		return WakeState{}, false, nil
	}
	return b.waker.State(ctx, name)
}

// wakeCall is one wake-up in progress, shared by every circuit that asks
// for the device until it registers or the wake window passes.
type wakeCall struct {
	done  chan struct{} // closed once the wake was sent (or failed)
	err   error
	until time.Time
}

// awaitWoken wakes name (once for all concurrent callers) and waits until it
// has registered port, or reports why not.
func (b *Board) awaitWoken(ctx context.Context, name string, port uint32) (*Device, error) {
	start := b.now()
	ctx, cancel := context.WithTimeout(ctx, b.wakeTimeout)
	defer cancel()

	b.mu.Lock()
	if b.byName[name] != nil {
		// It arrived since the caller looked: no wake, only the port to await.
		b.mu.Unlock()
		return b.awaitPort(ctx, name, port)
	}
	call := b.wakes[name]
	sender := false
	if call == nil || b.now().After(call.until) {
		call = &wakeCall{done: make(chan struct{}), until: start.Add(b.wakeTimeout)}
		b.wakes[name] = call
		b.mu.Unlock()
		sender = true
		call.err = b.waker.Wake(ctx, name)
		close(call.done)
		if call.err != nil {
			b.mu.Lock()
			if b.wakes[name] == call {
				delete(b.wakes, name)
			}
			b.mu.Unlock()
		}
	} else {
		b.mu.Unlock()
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, &WakeTimeoutError{Name: name, After: b.wakeTimeout}
	}
	dev, err := b.wakeResult(ctx, call, name, port)
	if sender && b.wakeObserver != nil {
		b.wakeObserver(wakeOutcome(err), b.now().Sub(start))
	}
	return dev, err
}

func (b *Board) wakeResult(ctx context.Context, call *wakeCall, name string, port uint32) (*Device, error) {
	if call.err != nil {
		var off *OfflineError
		if errors.Is(call.err, ErrNoWake) || errors.As(call.err, &off) {
			return nil, call.err
		}
		return nil, &WakeError{Name: name, Err: call.err}
	}
	return b.awaitPort(ctx, name, port)
}

func wakeOutcome(err error) string {
	var off *OfflineError
	var wt *WakeTimeoutError
	switch {
	case err == nil:
		return WakeAnswered
	case errors.Is(err, ErrNoWake):
		return WakeNotOnDemand
	case errors.As(err, &off):
		return WakeOffline
	case errors.As(err, &wt):
		return WakeTimeout
	default:
		// NoPortError included: it came, but not with what was asked for.
		var np *NoPortError
		if errors.As(err, &np) {
			return WakeAnswered
		}
		return WakeFailed
	}
}

// awaitPort waits until a device holding name forwards port. Once a device
// holds the name it has portGrace to add the port; ctx bounds the whole wait.
func (b *Board) awaitPort(ctx context.Context, name string, port uint32) (*Device, error) {
	var registered time.Time
	for {
		b.mu.Lock()
		dev := b.byName[name]
		if dev != nil && dev.has(port) {
			b.mu.Unlock()
			return dev, nil
		}
		if dev != nil && registered.IsZero() {
			registered = b.now()
		}
		ch := b.changed[name]
		if ch == nil {
			ch = make(chan struct{})
			b.changed[name] = ch
		}
		b.mu.Unlock()
		var grace <-chan time.Time
		if !registered.IsZero() {
			t := time.NewTimer(portGrace - b.now().Sub(registered))
			defer t.Stop()
			grace = t.C
		}
		select {
		case <-ch:
		case <-grace:
			return dev, &NoPortError{Name: name, Port: port, Exposed: dev.Ports()}
		case <-ctx.Done():
			if dev != nil {
				return dev, &NoPortError{Name: name, Port: port, Exposed: dev.Ports()}
			}
			return nil, &WakeTimeoutError{Name: name, After: b.wakeTimeout}
		}
	}
}

// notifyLocked tells circuits waiting on any of d's names that d changed.
// b.mu must be held.
func (b *Board) notifyLocked(d *Device) {
	for _, n := range d.names {
		if ch := b.changed[n]; ch != nil {
			close(ch)
			delete(b.changed, n)
		}
	}
}
