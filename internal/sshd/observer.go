package sshd

// Observer is told what the front end does, for metrics. It must be cheap
// and safe for concurrent use; the SSH front end knows nothing of how it
// is exported. Labels it receives come from small fixed sets, never a
// device's or a key's name.
type Observer interface {
	// Handshake reports one connection's SSH handshake and authentication.
	Handshake(ok bool)
	// AuthDenied reports a refused key with a policy.Deny* code.
	AuthDenied(code string)
	// DeviceOnline moves the count of connected devices by delta.
	DeviceOnline(delta int)
	// CircuitOpened and CircuitClosed bracket one joined circuit.
	CircuitOpened()
	CircuitClosed(toDevice, fromDevice int64)
	// CircuitRefused reports a refused circuit by kind: "not-permitted",
	// "no-device", "offline", "no-port", "device-error", "limit",
	// "wake-timeout", "wake-failed", "malformed".
	CircuitRefused(kind string)
}

// nopObserver is the default: nothing is counted.
type nopObserver struct{}

func (nopObserver) Handshake(bool)             {}
func (nopObserver) AuthDenied(string)          {}
func (nopObserver) DeviceOnline(int)           {}
func (nopObserver) CircuitOpened()             {}
func (nopObserver) CircuitClosed(int64, int64) {}
func (nopObserver) CircuitRefused(string)      {}
