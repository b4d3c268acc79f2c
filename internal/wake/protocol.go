// Package wake is the on-demand protocol: the server asks a sleeping device,
// over MQTT, to dial in now; the device publishes its state. It defines the
// topics and payloads and the server's side (Waker) over a small Client
// interface; it knows nothing of a particular MQTT library or broker.
package wake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Version is the payload version this package writes and accepts.
const Version = 1

// DefaultPrefix is the first topic level when none is configured.
const DefaultPrefix = "switchboard"

// Topics names the two topics of each device under a prefix.
type Topics struct{ Prefix string }

// Wake is where the server publishes wake-ups for name (server → device,
// QoS 1, not retained).
func (t Topics) Wake(name string) string { return t.prefix() + "/" + name + "/wake" }

// State is where the device publishes its state (device → all, QoS 1,
// retained; the agent's will message sets "offline").
func (t Topics) State(name string) string { return t.prefix() + "/" + name + "/state" }

func (t Topics) prefix() string {
	if t.Prefix == "" {
		return DefaultPrefix
	}
	return t.Prefix
}

// Message is a wake-up: {"v":1,"id":"…","server":"HOST:PORT","expires":"RFC 3339"}.
type Message struct {
	V       int       `json:"v"`
	ID      string    `json:"id"`
	Server  string    `json:"server"`
	Expires time.Time `json:"expires"`
}

// The states a device publishes.
const (
	Asleep     = "asleep"
	Connecting = "connecting"
	Connected  = "connected"
	Offline    = "offline"
)

// State is a device's state: {"v":1,"state":"asleep","since":"RFC 3339","agent":"version"}.
type State struct {
	V     int       `json:"v"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
	Agent string    `json:"agent,omitempty"`
}

// maxPayload bounds what either parser reads: real payloads are ~150 bytes.
const maxPayload = 1024

// ErrPayload wraps every reason a payload is refused.
var ErrPayload = errors.New("wake: bad payload")

// ParseMessage decodes and checks a wake-up. It does not check expiry or
// repetition: that needs a clock and memory, which the agent has.
func ParseMessage(b []byte) (Message, error) {
	var m Message
	if err := decode(b, &m); err != nil {
		return m, err
	}
	switch {
	case m.V != Version:
		return m, fmt.Errorf("%w: version %d, want %d", ErrPayload, m.V, Version)
	case !validID(m.ID):
		return m, fmt.Errorf("%w: id must be 8-64 letters, digits, '-' or '_'", ErrPayload)
	case m.Expires.IsZero():
		return m, fmt.Errorf("%w: no expiry", ErrPayload)
	}
	if host, port, err := net.SplitHostPort(m.Server); err != nil || host == "" || port == "" || len(m.Server) > 255 {
		return m, fmt.Errorf("%w: server %q is not HOST:PORT", ErrPayload, clip(m.Server))
	}
	return m, nil
}

// ParseState decodes and checks a state message.
func ParseState(b []byte) (State, error) {
	var s State
	if err := decode(b, &s); err != nil {
		return s, err
	}
	switch {
	case s.V != Version:
		return s, fmt.Errorf("%w: version %d, want %d", ErrPayload, s.V, Version)
	case s.State != Asleep && s.State != Connecting && s.State != Connected && s.State != Offline:
		return s, fmt.Errorf("%w: state %q", ErrPayload, clip(s.State))
	case s.Since.IsZero():
		return s, fmt.Errorf("%w: no since", ErrPayload)
	case len(s.Agent) > 64:
		return s, fmt.Errorf("%w: agent version too long", ErrPayload)
	}
	return s, nil
}

func decode(b []byte, v any) error {
	if len(b) > maxPayload {
		return fmt.Errorf("%w: %d bytes", ErrPayload, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrPayload, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrPayload)
	}
	return nil
}

func validID(id string) bool {
	if len(id) < 8 || len(id) > 64 {
		return false
	}
	return strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") == ""
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
