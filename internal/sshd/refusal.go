package sshd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
)

// refusal is what an operator reads when a channel is refused: one sentence
// naming the device and the problem, kept apart from the internal cause that
// only goes to the log.
type refusal struct {
	reason   ssh.RejectionReason
	sentence string
	kind     string // for metrics: see Observer.CircuitRefused
}

func (r *refusal) Error() string { return r.sentence }

func refuse(kind string, reason ssh.RejectionReason, format string, args ...any) *refusal {
	return &refusal{reason: reason, sentence: "switchboard: " + fmt.Sprintf(format, args...), kind: kind}
}

func noDevice(name string) *refusal {
	return refuse("no-device", ssh.ConnectionFailed, "no device named %q", name)
}

func notPermitted(name string, port uint32) *refusal {
	return refuse("not-permitted", ssh.Prohibited, "your key may not reach %q", fmt.Sprintf("%s:%d", name, port))
}

func offline(name string, lastSeen, now time.Time) *refusal {
	if lastSeen.IsZero() {
		return refuse("offline", ssh.ConnectionFailed, "device %q is offline (never seen)", name)
	}
	return refuse("offline", ssh.ConnectionFailed, "device %q is offline (last seen %s, %s ago)",
		name, lastSeen.UTC().Format(time.RFC3339), ago(now.Sub(lastSeen)))
}

// refusalFor turns an error from board.Open into the operator's sentence.
// reserved says whether the name belongs to an authorized_keys entry, which
// makes a never-seen name "offline" rather than unknown.
func refusalFor(err error, name string, port uint32, reserved bool, timeout time.Duration, now time.Time) *refusal {
	var off *board.OfflineError
	var noPort *board.NoPortError
	var openErr *ssh.OpenChannelError
	var wakeTimeout *board.WakeTimeoutError
	var wakeErr *board.WakeError
	switch {
	case errors.As(err, &wakeTimeout):
		return refuse("wake-timeout", ssh.ConnectionFailed, "device %q did not answer the wake-up within %s", name, wakeTimeout.After)
	case errors.As(err, &wakeErr):
		// The cause (broker address, TLS detail) is for the log only.
		return refuse("wake-failed", ssh.ConnectionFailed, "device %q is asleep and the server could not send it a wake-up; try again shortly", name)
	case errors.As(err, &off):
		if off.LastSeen.IsZero() && !reserved {
			return noDevice(name)
		}
		return offline(name, off.LastSeen, now)
	case errors.As(err, &noPort):
		return refuse("no-port", ssh.ConnectionFailed, "device %q does not expose port %d (%s)", name, port, exposes(noPort.Exposed))
	case errors.As(err, &openErr):
		// The device chose this text: keep it short and on one line.
		msg := strings.Join(strings.Fields(openErr.Message), " ")
		if len(msg) > maxDeviceMessage {
			msg = msg[:maxDeviceMessage] + "…"
		}
		if msg == "" {
			msg = openErr.Reason.String()
		}
		return refuse("device-error", ssh.ConnectionFailed, "device %q could not connect to its port %d: %s", name, port, msg)
	case errors.Is(err, errNotAnswering):
		return refuse("device-error", ssh.ResourceShortage, "device %q is not answering (other circuits are already waiting for it)", name)
	case errors.Is(err, context.DeadlineExceeded):
		return refuse("device-error", ssh.ConnectionFailed, "device %q did not answer within %s", name, timeout)
	default:
		return refuse("device-error", ssh.ConnectionFailed, "device %q went away before the circuit opened", name)
	}
}

// maxDeviceMessage bounds the device's own words in a refusal.
const maxDeviceMessage = 200

// maxListedPorts bounds the ports a sentence lists.
const maxListedPorts = 16

func exposes(ports []uint32) string {
	if len(ports) == 0 {
		return "it exposes no ports"
	}
	var s []string
	for _, p := range ports[:min(len(ports), maxListedPorts)] {
		s = append(s, fmt.Sprint(p))
	}
	if more := len(ports) - maxListedPorts; more > 0 {
		s = append(s, fmt.Sprintf("and %d more", more))
	}
	return "it exposes " + strings.Join(s, ", ")
}

// ago renders a duration the way a person says it: the largest unit only.
func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}
