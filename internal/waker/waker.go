// Package waker is the server's side of the wake protocol: it implements
// board.Waker by fetching one device's retained state and publishing a
// wake-up, over a wake.Client.
package waker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/wake"
)

// Waker implements board.Waker over MQTT.
// It holds no state for the fleet: each question about a device is one
// short subscription to that device's retained state, so a million
// sleeping devices cost the server nothing until someone asks for one.
type Waker struct {
	Client wake.Client
	Topics wake.Topics
	// Server is the HOST:PORT the device is told to dial (--public-addr).
	Server string
	// Valid is how long a wake-up may be acted on (the wake timeout).
	Valid time.Duration
	// Grace is how long to wait, after subscribing, for a retained state
	// before deciding there is none. Brokers send it right after SUBACK.
	Grace time.Duration
	Log   *slog.Logger
	Now   func() time.Time
}

var _ board.Waker = (*Waker)(nil)

// DefaultGrace is the wait for a retained state when Waker.Grace is zero.
const DefaultGrace = 500 * time.Millisecond

// State fetches the device's retained state. ok is false when there is
// none: the name is not an on-demand device (or has never connected to the
// broker). A malformed state is logged and treated as none.
func (w *Waker) State(ctx context.Context, name string) (board.WakeState, bool, error) {
	got := make(chan []byte, 1)
	cancel, err := w.Client.Subscribe(ctx, w.Topics.State(name), func(payload []byte, _ bool) {
		select {
		case got <- payload:
		default: // only the first (retained) message matters
		}
	})
	if err != nil {
		return board.WakeState{}, false, fmt.Errorf("wake: state of %q: %w", name, err)
	}
	defer cancel()
	grace := w.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case payload := <-got:
		st, err := wake.ParseState(payload)
		if err != nil {
			w.log().Warn("ignoring a malformed state", "device", name, "error", err.Error())
			return board.WakeState{}, false, nil
		}
		return board.WakeState{State: st.State, Since: st.Since, Agent: st.Agent}, true, nil
	case <-t.C:
		return board.WakeState{}, false, nil
	case <-ctx.Done():
		return board.WakeState{}, false, ctx.Err()
	}
}

// Wake publishes one wake-up for name, unless it is not on demand
// (board.ErrNoWake) or says it is offline (*board.OfflineError: its will
// message fired, so a wake would go unheard).
func (w *Waker) Wake(ctx context.Context, name string) error {
	st, ok, err := w.State(ctx, name)
	switch {
	case err != nil:
		return err
	case !ok:
		return board.ErrNoWake
	case st.State == wake.Offline:
		return &board.OfflineError{Name: name, LastSeen: st.Since}
	}
	id := make([]byte, 12)
	rand.Read(id)
	msg := wake.Message{
		V:       wake.Version,
		ID:      base64.RawURLEncoding.EncodeToString(id),
		Server:  w.Server,
		Expires: w.now().Add(w.Valid).UTC().Truncate(time.Second),
	}
	payload, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("wake: %w", err)
	}
	if err := w.Client.Publish(ctx, w.Topics.Wake(name), payload, false); err != nil {
		return fmt.Errorf("wake: publish to %q: %w", name, err)
	}
	w.log().Info("wake sent", "device", name, "id", msg.ID, "state", st.State)
	return nil
}

func (w *Waker) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *Waker) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.New(slog.DiscardHandler)
}
