// Package policy turns an OpenSSH-format authorized_keys file into an immutable Policy that
// answers who a key is, which names it may listen as, and which device ports it may reach.
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Role is a set of things a key may do, from its access= options.
type Role uint8

const (
	// Listen lets a key register a device (access="listen").
	Listen Role = 1 << iota
	// Initiate lets a key open circuits and run session commands (access="initiate").
	Initiate
)

// String returns "listen", "initiate", "listen,initiate" or "none".
func (r Role) String() string {
	var parts []string
	if r&Listen != 0 {
		parts = append(parts, "listen")
	}
	if r&Initiate != 0 {
		parts = append(parts, "initiate")
	}
	if rest := r &^ (Listen | Initiate); rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%02x", uint8(rest)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// Target is one permitopen entry: a name glob and a port (0 = any port, written "*").
type Target struct {
	NameGlob string // lower-case; '*' and '?' are wildcards
	Port     uint32
}

// String returns the target as it is written in a permitopen option.
func (t Target) String() string {
	if t.Port == 0 {
		return t.NameGlob + ":*"
	}
	return fmt.Sprintf("%s:%d", t.NameGlob, t.Port)
}

// Entry is one good line of an authorized_keys file. Entries are shared by every caller of a
// Policy: callers must not modify them.
type Entry struct {
	Line          int // 1-based line number in the file
	Key           ssh.PublicKey
	Fingerprint   string // ssh.FingerprintSHA256(Key)
	Comment       string
	Roles         Role
	Hostname      string    // canonical, or "" when the line has no hostname= option
	Aliases       []string  // canonical, without duplicates or the hostname
	Expiry        time.Time // zero: never expires
	PermitOpen    []Target  // empty: may reach every device and port
	PermitListen  []uint32  // empty: any virtual port; 0 in the list ("*"): any virtual port
	CertAuthority bool      // parsed, not yet honoured: certificates come later
	Principals    []string  // principals="..." (only meaningful with cert-authority)
	Ignored       []string  // OpenSSH options accepted and ignored here, by lower-case name

	// from holds one pattern list per from= option; every list must admit the address.
	from []addrList
}

// Names returns the device names this entry's key registers when it logs in as user: the
// hostname= name if there is one, else the user name, followed by the aliases. It fails when
// the user name has to be used and is not a valid name.
func (e *Entry) Names(user string) ([]string, error) {
	primary := e.Hostname
	if primary == "" {
		c, err := CanonicalName(user)
		if err != nil {
			return nil, err
		}
		primary = c
	}
	names := make([]string, 1, 1+len(e.Aliases))
	names[0] = primary
	for _, a := range e.Aliases {
		if !slices.Contains(names, a) {
			names = append(names, a)
		}
	}
	return names, nil
}

// MayReach reports whether an operator with this entry may open a circuit to name:port. name
// should be canonical; it is matched case-insensitively against each permitopen glob, so the
// caller decides which of a device's names (the one asked for, or all of them) to check.
func (e *Entry) MayReach(name string, port uint32) bool {
	if len(e.PermitOpen) == 0 {
		return true
	}
	name = strings.ToLower(name)
	for _, t := range e.PermitOpen {
		if (t.Port == 0 || t.Port == port) && globMatch(name, strings.ToLower(t.NameGlob)) {
			return true
		}
	}
	return false
}

// MayListen reports whether a device with this entry may register virtual port port. As in
// OpenSSH, a request for port 0 (any free port) is allowed only when every port is.
func (e *Entry) MayListen(port uint32) bool {
	if len(e.PermitListen) == 0 {
		return true
	}
	for _, p := range e.PermitListen {
		if p == 0 || p == port {
			return true
		}
	}
	return false
}

// refusal returns why this entry does not let its key log in from remote at now, or "".
func (e *Entry) refusal(remote netip.Addr, now time.Time) (code, reason string) {
	if e.CertAuthority {
		return DenyCertAuthority, "cert-authority key cannot log in directly"
	}
	if e.Roles&(Listen|Initiate) == 0 {
		// Checked before from= and expiry-time=: fixing those would not help this line.
		return DenyNoAccess, "no access= option"
	}
	if !e.Expiry.IsZero() && !now.Before(e.Expiry) {
		return DenyExpired, "expired " + e.Expiry.UTC().Format(time.RFC3339)
	}
	for _, l := range e.from {
		if !l.match(remote) {
			return DenyFrom, "from= does not match " + remote.Unmap().WithZone("").String()
		}
	}
	return "", ""
}

// Denial codes: a small fixed set, for metrics and alerts, beside the
// human reason.
const (
	DenyUnknownKey    = "unknown-key"
	DenyCertAuthority = "cert-authority"
	DenyNoAccess      = "no-access"
	DenyExpired       = "expired"
	DenyFrom          = "from"
)

// LineError is a bad line of an authorized_keys file; the line was skipped.
type LineError struct {
	Line int // 1-based
	Err  error
}

// Error returns "line N: what is wrong", for a log line that also names the file.
func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// Unwrap returns what is wrong with the line.
func (e *LineError) Unwrap() error { return e.Err }

// Denial is the error Authorize returns when a key may not log in.
type Denial struct {
	// Reason is short and stable enough for logs and metrics, such as "unknown key" or
	// "expired 2026-01-01T00:00:00Z".
	Reason string
	// Line is the first line that listed the key but refused it; 0 for an unknown key.
	Line int
	// Code is one of the Deny constants.
	Code string
}

// Error returns "policy: " and the reason.
func (d *Denial) Error() string { return "policy: " + d.Reason }

// Policy is a parsed authorized_keys file. It is immutable, so it may be shared freely; the
// zero value and nil both deny every key.
type Policy struct {
	entries []*Entry
	byKey   map[string][]*Entry // wire-format key → its entries in file order
	owners  map[string]*Entry   // hostname= and alias= names → first entry naming them
}

// Entries returns the entries in file order. The slice is the caller's; the entries are shared.
func (p *Policy) Entries() []*Entry {
	if p == nil {
		return nil
	}
	return slices.Clone(p.entries)
}

// Len returns the number of entries.
func (p *Policy) Len() int {
	if p == nil {
		return 0
	}
	return len(p.entries)
}

// Authorize returns the first entry, in file order, that lists key and lets it log in from
// remote at now. As in OpenSSH, a line whose options refuse the key does not end the search:
// a later line with the same key may admit it. A refusal is a *Denial carrying the reason the
// first such line gave. A cert-authority line never admits the plain key it lists.
func (p *Policy) Authorize(key ssh.PublicKey, remote netip.Addr, now time.Time) (*Entry, error) {
	if p == nil || key == nil {
		return nil, &Denial{Reason: "unknown key", Code: DenyUnknownKey}
	}
	var first *Denial
	for _, e := range p.byKey[string(key.Marshal())] {
		code, reason := e.refusal(remote, now)
		if code == "" {
			return e, nil
		}
		if first == nil {
			first = &Denial{Reason: reason, Line: e.Line, Code: code}
		}
	}
	if first == nil {
		return nil, &Denial{Reason: "unknown key", Code: DenyUnknownKey}
	}
	return nil, first
}

// Owner returns the first entry whose hostname= or alias= is name, or nil. The server uses it
// to stop a key that does not carry a name from claiming it through its SSH user name.
func (p *Policy) Owner(name string) *Entry {
	if p == nil {
		return nil
	}
	return p.owners[strings.ToLower(name)]
}

func (p *Policy) add(e *Entry) {
	p.entries = append(p.entries, e)
	k := string(e.Key.Marshal())
	p.byKey[k] = append(p.byKey[k], e)
	if e.Hostname != "" {
		p.claim(e.Hostname, e)
	}
	for _, a := range e.Aliases {
		p.claim(a, e)
	}
}

func (p *Policy) claim(name string, e *Entry) {
	if _, taken := p.owners[name]; !taken {
		p.owners[name] = e
	}
}
