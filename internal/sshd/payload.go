package sshd

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// maxHostLen bounds the host strings a client may send: a DNS name is at most
// 253 bytes, and nothing longer is worth logging or looking up.
const maxHostLen = 255

// tcpipForwardRequest is the payload of a "tcpip-forward" and of a
// "cancel-tcpip-forward" global request (RFC 4254 section 7.1).
type tcpipForwardRequest struct {
	BindAddr string
	BindPort uint32
}

// tcpipForwardReply answers a "tcpip-forward" for port 0 with the port that
// was allocated (RFC 4254 section 7.1).
type tcpipForwardReply struct {
	Port uint32
}

// directTCPIPRequest is the extra data of a "direct-tcpip" channel open
// (RFC 4254 section 7.2).
type directTCPIPRequest struct {
	Host       string
	Port       uint32
	OriginAddr string
	OriginPort uint32
}

// forwardedTCPIPRequest is the extra data of a "forwarded-tcpip" channel open
// (RFC 4254 section 7.2). Addr and Port must echo the device's tcpip-forward
// exactly: OpenSSH matches incoming channels on them.
type forwardedTCPIPRequest struct {
	Addr       string
	Port       uint32
	OriginAddr string
	OriginPort uint32
}

var errPayload = errors.New("sshd: malformed payload")

// parseTCPIPForward decodes and checks a tcpip-forward payload.
func parseTCPIPForward(b []byte) (tcpipForwardRequest, error) {
	var r tcpipForwardRequest
	if err := ssh.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%w: tcpip-forward: %v", errPayload, err)
	}
	if len(r.BindAddr) > maxHostLen {
		return r, fmt.Errorf("%w: tcpip-forward: bind address of %d bytes", errPayload, len(r.BindAddr))
	}
	if r.BindPort > 65535 {
		return r, fmt.Errorf("%w: tcpip-forward: port %d out of range", errPayload, r.BindPort)
	}
	return r, nil
}

// parseDirectTCPIP decodes and checks a direct-tcpip payload. The origin is
// the client's claim and is only logged, so it is not checked beyond size.
func parseDirectTCPIP(b []byte) (directTCPIPRequest, error) {
	var r directTCPIPRequest
	if err := ssh.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%w: direct-tcpip: %v", errPayload, err)
	}
	switch {
	case r.Host == "":
		return r, fmt.Errorf("%w: direct-tcpip: empty host", errPayload)
	case len(r.Host) > maxHostLen || len(r.OriginAddr) > maxHostLen:
		return r, fmt.Errorf("%w: direct-tcpip: host too long", errPayload)
	case r.Port == 0 || r.Port > 65535:
		return r, fmt.Errorf("%w: direct-tcpip: port %d out of range", errPayload, r.Port)
	}
	return r, nil
}

// execRequest is the payload of a session's "exec" request (RFC 4254
// section 6.5).
type execRequest struct {
	Command string
}

// exitStatus is the payload of an "exit-status" request (RFC 4254
// section 6.10).
type exitStatus struct {
	Status uint32
}
