package mqttc

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/eclipse/paho.golang/autopaho"
)

// RefusedError is a broker's refusal of a connection, a subscription or a
// publish, with the MQTT 5 reason code it gave.
type RefusedError struct {
	Op     string // "connect", "subscribe" or "publish"
	Topic  string // empty for "connect"
	Code   byte   // MQTT 5 reason code, 0x80 or more
	Reason string // the broker's reason string, if it sent one
}

func (e *RefusedError) Error() string {
	s := "mqttc: the broker refused to " + e.Op
	if e.Topic != "" {
		s += fmt.Sprintf(" %q", e.Topic)
	}
	s += ": " + reasonName(e.Code)
	if e.Reason != "" && e.Reason != reasonNames[e.Code] {
		s += " (" + e.Reason + ")"
	}
	return s
}

// reasonNames are the MQTT 5 reason codes a broker refuses with (MQTT 5
// section 2.4).
var reasonNames = map[byte]string{
	0x80: "unspecified error",
	0x81: "malformed packet",
	0x82: "protocol error",
	0x83: "implementation specific error",
	0x84: "unsupported protocol version",
	0x85: "client identifier not valid",
	0x86: "bad user name or password",
	0x87: "not authorized",
	0x88: "server unavailable",
	0x89: "server busy",
	0x8A: "banned",
	0x8B: "server shutting down",
	0x8C: "bad authentication method",
	0x8D: "keep alive timeout",
	0x8E: "session taken over",
	0x8F: "topic filter invalid",
	0x90: "topic name invalid",
	0x91: "packet identifier in use",
	0x93: "receive maximum exceeded",
	0x95: "packet too large",
	0x97: "quota exceeded",
	0x99: "payload format invalid",
	0x9A: "retain not supported",
	0x9B: "QoS not supported",
	0x9C: "use another server",
	0x9D: "server moved",
	0x9E: "shared subscriptions not supported",
	0x9F: "connection rate exceeded",
	0xA1: "subscription identifiers not supported",
	0xA2: "wildcard subscriptions not supported",
}

func reasonName(code byte) string {
	if n, ok := reasonNames[code]; ok {
		return fmt.Sprintf("%s (0x%02X)", n, code)
	}
	return fmt.Sprintf("reason 0x%02X", code)
}

// classify turns autopaho's connection refusal into a *RefusedError.
func classify(err error) error {
	var ce *autopaho.ConnackError
	if errors.As(err, &ce) {
		return &RefusedError{Op: "connect", Code: ce.ReasonCode, Reason: ce.Reason}
	}
	return err
}

// permanent reports whether a failed connection attempt is a configuration
// error that retrying will not fix: the broker refusing the client, or
// either side of the TLS handshake refusing the other's certificate.
func permanent(err error) bool {
	var refused *RefusedError
	if errors.As(err, &refused) {
		switch refused.Code {
		case 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C:
			return true
		}
		return false
	}
	// A TLS alert from the broker, such as "certificate required" or
	// "unknown certificate authority" (crypto/tls reports those as a
	// net.OpError whose Op is "remote error").
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return true
	}
	var (
		alert    tls.AlertError
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	return errors.As(err, &alert) || errors.As(err, &verify) || errors.As(err, &unknown) ||
		errors.As(err, &hostname) || errors.As(err, &invalid)
}
