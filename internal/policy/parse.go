package policy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// dsaKeyType is recognised so that a DSA line is reported as such, not as bad options.
const dsaKeyType = "ssh-dss"

// isKeyType reports whether t is a plain key type. A line starting with one has no options
// (OpenSSH instead tries to parse a key first; the outcome is the same).
func isKeyType(t string) bool {
	switch t {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoRSA, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384,
		ssh.KeyAlgoECDSA521, ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256, dsaKeyType,
		ssh.KeyAlgoMLDSA44, ssh.KeyAlgoMLDSA65, ssh.KeyAlgoMLDSA87:
		return true
	}
	return false
}

// isCertType reports whether t names a certificate, which authorized_keys cannot hold.
func isCertType(t string) bool { return strings.Contains(t, "-cert-v01@") }

// optionKind says how an option is written and whether it means anything here.
type optionKind uint8

const (
	unknownOption optionKind = iota
	flagOption               // name alone
	valueOption              // name="value"
	ignoredFlag              // an OpenSSH flag with no meaning for a switchboard
	ignoredValue             // an OpenSSH name="value" option with no meaning for a switchboard
)

func kindOf(lname string) optionKind {
	switch lname {
	case "cert-authority":
		return flagOption
	case "access", "hostname", "alias", "from", "expiry-time", "permitopen", "permitlisten",
		"principals":
		return valueOption
	case "restrict", "pty", "no-pty", "agent-forwarding", "no-agent-forwarding",
		"x11-forwarding", "no-x11-forwarding", "user-rc", "no-user-rc", "port-forwarding",
		"no-port-forwarding", "touch-required", "no-touch-required", "verify-required":
		return ignoredFlag
	case "command", "environment", "tunnel":
		return ignoredValue
	}
	return unknownOption
}

// Parse parses a whole authorized_keys file. Each bad line is skipped and reported as a
// *LineError, in line order; every good line applies. Parse never panics.
func Parse(data []byte) (*Policy, []error) {
	p := &Policy{byKey: map[string][]*Entry{}, owners: map[string]*Entry{}}
	var errs []error
	for n := 1; len(data) > 0; n++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		e, err := parseLine(string(line))
		switch {
		case err != nil:
			errs = append(errs, &LineError{Line: n, Err: err})
		case e != nil:
			e.Line = n
			p.add(e)
		}
	}
	return p, errs
}

// parseLine parses one line: nil and no error for a blank line or a comment.
func parseLine(s string) (*Entry, error) {
	s = strings.TrimSuffix(s, "\r")
	s = strings.TrimLeft(s, " \t")
	if s == "" || s[0] == '#' {
		return nil, nil
	}

	first, rest := cutField(s)
	var opts string
	if !isKeyType(first) && !isCertType(first) {
		if next, _ := cutField(rest); !strings.ContainsAny(first, `=,"`) && strings.HasPrefix(next, "AAAA") {
			// A lone word before key data is far likelier a mistyped key type than an option.
			return nil, fmt.Errorf("unknown key type %s", clip(first))
		}
		var err error
		if opts, rest, err = splitOptions(s); err != nil {
			return nil, err
		}
		rest = strings.TrimLeft(rest, " \t")
	} else {
		rest = s
	}

	// Options first, so that errors are reported left to right.
	e := &Entry{}
	if opts != "" {
		if err := parseOptions(opts, e); err != nil {
			return nil, err
		}
	}
	key, comment, err := parseKey(rest)
	if err != nil {
		return nil, err
	}
	e.Key, e.Fingerprint, e.Comment = key, ssh.FingerprintSHA256(key), comment
	e.Aliases = slices.DeleteFunc(e.Aliases, func(a string) bool { return a == e.Hostname })
	if len(e.Aliases) == 0 {
		e.Aliases = nil
	}
	return e, nil
}

// parseKey parses "keytype base64 [comment]".
func parseKey(s string) (key ssh.PublicKey, comment string, err error) {
	typ, rest := cutField(s)
	data, comment := cutField(rest)
	switch {
	case typ == "":
		return nil, "", errors.New("options but no key")
	case isCertType(typ):
		return nil, "", fmt.Errorf("%s is a certificate; list the CA's key with cert-authority instead", clip(typ))
	case !isKeyType(typ):
		return nil, "", fmt.Errorf("unknown key type %s", clip(typ))
	case typ == dsaKeyType:
		// OpenSSH disabled DSA in 7.0 and removed it in 10.0; x/crypto calls it insecure.
		return nil, "", errors.New("ssh-dss (DSA) keys are insecure and not accepted")
	case data == "":
		return nil, "", fmt.Errorf("%s key has no key data", typ)
	}
	blob, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, "", errors.New("key data is not valid base64")
	}
	if key, err = ssh.ParsePublicKey(blob); err != nil {
		return nil, "", fmt.Errorf("bad %s key: %w", typ, err)
	}
	if key.Type() != typ {
		return nil, "", fmt.Errorf("key data is %s, not %s", clip(key.Type()), typ)
	}
	return key, strings.TrimRight(comment, " \t"), nil
}

// cutField returns the text before the first space or tab, and what follows the run of
// spaces and tabs after it.
func cutField(s string) (field, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], " \t")
}

// splitOptions splits s after its options, which end at the first space or tab outside
// double quotes. As in OpenSSH's sshkey_advance_past_options, `\"` never toggles quoting.
func splitOptions(s string) (opts, rest string, err error) {
	quoted := false
	i := 0
	for ; i < len(s) && (quoted || (s[i] != ' ' && s[i] != '\t')); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '"':
			i++
		case s[i] == '"':
			quoted = !quoted
		}
	}
	if quoted {
		return "", "", errors.New("unterminated quote in options")
	}
	return s[:i], s[i:], nil
}

// optionState tracks options that may appear only once on a line.
type optionState struct {
	hostname, principals bool
}

// parseOptions parses comma-separated options into e.
func parseOptions(opts string, e *Entry) error {
	var st optionState
	for {
		i := strings.IndexAny(opts, "=,")
		if i < 0 {
			i = len(opts)
		}
		name := opts[:i]
		opts = opts[i:]
		var value string
		hasValue := strings.HasPrefix(opts, "=")
		if hasValue {
			var err error
			if value, opts, err = dequote(name, opts[1:]); err != nil {
				return err
			}
		}
		if err := applyOption(e, &st, name, value, hasValue); err != nil {
			return err
		}
		if opts == "" {
			return nil
		}
		if opts[0] != ',' {
			return fmt.Errorf("unexpected %s after option %s", clip(opts), clip(name))
		}
		opts = opts[1:]
		if opts == "" {
			return errors.New("options end with a comma")
		}
	}
}

// dequote reads a double-quoted value from the start of s, where only `\"` is an escape (as
// OpenSSH's opt_dequote), and returns it and what follows.
func dequote(name, s string) (value, rest string, err error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", fmt.Errorf("value of option %s must be in double quotes", clip(name))
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '"':
			b.WriteByte('"')
			i++
		case s[i] == '"':
			return b.String(), s[i+1:], nil
		default:
			b.WriteByte(s[i])
		}
	}
	return "", "", fmt.Errorf("unterminated quote in option %s", clip(name))
}

func applyOption(e *Entry, st *optionState, name, value string, hasValue bool) error {
	if name == "" {
		return errors.New("empty option name")
	}
	lname := strings.ToLower(name)
	kind := kindOf(lname)
	flag := kind == flagOption || kind == ignoredFlag
	switch {
	case kind == unknownOption:
		return fmt.Errorf("unknown option %s", clip(name))
	case flag && hasValue:
		return fmt.Errorf("option %q takes no value", lname)
	case !flag && !hasValue:
		return fmt.Errorf("option %q needs a value", lname)
	case kind == ignoredFlag || kind == ignoredValue:
		// Only the name is kept: a value (command=, environment=) may be private.
		if !slices.Contains(e.Ignored, lname) {
			e.Ignored = append(e.Ignored, lname)
		}
		return nil
	}

	switch lname {
	case "access":
		switch strings.ToLower(value) {
		case "listen":
			e.Roles |= Listen
		case "initiate":
			e.Roles |= Initiate
		default:
			return fmt.Errorf(`access=%s: want "listen" or "initiate"`, clip(value))
		}
	case "hostname":
		if st.hostname {
			return errors.New("more than one hostname= option")
		}
		st.hostname = true
		n, err := optionName(lname, value)
		if err != nil {
			return err
		}
		e.Hostname = n
	case "alias":
		n, err := optionName(lname, value)
		if err != nil {
			return err
		}
		if !slices.Contains(e.Aliases, n) {
			e.Aliases = append(e.Aliases, n)
		}
	case "from":
		l, err := parseAddrList(value)
		if err != nil {
			return fmt.Errorf("from=: %w", err)
		}
		e.from = append(e.from, l)
	case "expiry-time":
		t, err := parseExpiry(value)
		if err != nil {
			return err
		}
		// As OpenSSH: with several expiry-time= options the earliest wins.
		if e.Expiry.IsZero() || t.Before(e.Expiry) {
			e.Expiry = t
		}
	case "permitopen":
		t, err := parseTarget(value)
		if err != nil {
			return err
		}
		e.PermitOpen = append(e.PermitOpen, t)
	case "permitlisten":
		p, err := parseListen(value)
		if err != nil {
			return err
		}
		if !slices.Contains(e.PermitListen, p) {
			e.PermitListen = append(e.PermitListen, p)
		}
	case "cert-authority":
		e.CertAuthority = true
	case "principals":
		if st.principals {
			return errors.New("more than one principals= option")
		}
		st.principals = true
		for p := range strings.SplitSeq(value, ",") {
			if p == "" {
				return fmt.Errorf("principals=%s: empty principal", clip(value))
			}
			e.Principals = append(e.Principals, p)
		}
	}
	return nil
}

func optionName(option, value string) (string, error) {
	if why := nameProblem(value); why != "" {
		return "", fmt.Errorf("%s=%s is not a valid name: %s", option, clip(value), why)
	}
	return strings.ToLower(value), nil
}

// parseExpiry parses YYYYMMDD[HHMM[SS]] followed by "Z" or "UTC" for UTC, else local time, as
// OpenSSH's parse_absolute_time; unlike strptime it accepts only digits in range.
func parseExpiry(s string) (time.Time, error) {
	loc := time.Local
	digits := s
	switch {
	case len(s) > 1 && strings.EqualFold(s[len(s)-1:], "Z"):
		loc, digits = time.UTC, s[:len(s)-1]
	case len(s) > 3 && strings.EqualFold(s[len(s)-3:], "UTC"):
		loc, digits = time.UTC, s[:len(s)-3]
	}
	bad := fmt.Errorf("expiry-time=%s: want YYYYMMDD[HHMM[SS]][Z]", clip(s))
	var layout string
	switch len(digits) {
	case 8:
		layout = "20060102"
	case 12:
		layout = "200601021504"
	case 14:
		layout = "20060102150405"
	default:
		return time.Time{}, bad
	}
	if strings.Trim(digits, "0123456789") != "" {
		return time.Time{}, bad
	}
	t, err := time.ParseInLocation(layout, digits, loc)
	if err != nil {
		return time.Time{}, fmt.Errorf("expiry-time=%s: %w", clip(s), err)
	}
	// OpenSSH refuses times before 1970 too (its mktime check), and zero means "no expiry" here.
	if t.Unix() <= 0 {
		return time.Time{}, fmt.Errorf("expiry-time=%s: before 1970", clip(s))
	}
	return t, nil
}

// parseTarget parses a permitopen value, NAMEGLOB:PORT with PORT a number or "*".
func parseTarget(s string) (Target, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Target{}, fmt.Errorf("permitopen=%s: want NAME:PORT", clip(s))
	}
	glob, portText := s[:i], s[i+1:]
	if glob == "" {
		return Target{}, fmt.Errorf("permitopen=%s: empty name", clip(s))
	}
	// Not nameProblem: a glob may be longer than a name ("*" stands for many bytes) and start
	// or end anywhere.
	for j := 0; j < len(glob); j++ {
		if c := glob[j]; !isNameByte(c) && c != '*' && c != '?' {
			return Target{}, fmt.Errorf("permitopen=%s: %q is not allowed in a name pattern", clip(s), rune(c))
		}
	}
	port, err := parsePort(portText)
	if err != nil {
		return Target{}, fmt.Errorf("permitopen=%s: %w", clip(s), err)
	}
	return Target{NameGlob: strings.ToLower(glob), Port: port}, nil
}

// parseListen parses a permitlisten value, [HOST:]PORT. The host is only checked: a device's
// bind address always means the device itself.
func parseListen(s string) (uint32, error) {
	host, portText := "", s
	if rest, ok := strings.CutPrefix(s, "["); ok {
		h, p, ok := strings.Cut(rest, "]:")
		if !ok {
			return 0, fmt.Errorf("permitlisten=%s: want [ADDRESS]:PORT", clip(s))
		}
		if a, err := netip.ParseAddr(h); err != nil || !a.Is6() {
			return 0, fmt.Errorf("permitlisten=%s: %s is not an IPv6 address", clip(s), clip(h))
		}
		portText = p
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, portText = s[:i], s[i+1:]
		if strings.Contains(host, ":") {
			return 0, fmt.Errorf("permitlisten=%s: write an IPv6 address in brackets", clip(s))
		}
		if _, err := netip.ParseAddr(host); err != nil && host != "" && host != "*" && !strings.EqualFold(host, "localhost") {
			return 0, fmt.Errorf(`permitlisten=%s: host must be "", "*", "localhost" or an address`, clip(s))
		}
	}
	port, err := parsePort(portText)
	if err != nil {
		return 0, fmt.Errorf("permitlisten=%s: %w", clip(s), err)
	}
	return port, nil
}

// parsePort parses "*" as 0 (any port) or a port from 1 to 65535.
func parsePort(s string) (uint32, error) {
	if s == "*" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf(`port %s: want 1-65535 or "*"`, clip(s))
	}
	return uint32(n), nil
}
