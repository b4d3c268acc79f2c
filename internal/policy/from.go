package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// addrPattern is one entry of a from= list.
type addrPattern struct {
	negated bool
	prefix  netip.Prefix // set for an address or CIDR
	glob    string       // lower-case; set otherwise
}

// addrList is the pattern list of one from= option.
type addrList []addrPattern

// parseAddrList parses a from= value: comma-separated addresses, CIDRs and '*'/'?' globs, each
// optionally negated with '!'.
//
// OpenSSH accepts some lists that can never match (an empty entry, a space after a comma, a
// CIDR with host bits set, only negated patterns) and then refuses the key at login. Here they are line errors, so
// the mistake is reported when the file is loaded rather than discovered at login.
func parseAddrList(s string) (addrList, error) {
	if s == "" {
		return nil, errors.New("empty pattern list")
	}
	var l addrList
	for item := range strings.SplitSeq(s, ",") {
		p := addrPattern{}
		pat := item
		if strings.HasPrefix(pat, "!") {
			p.negated = true
			pat = pat[1:]
		}
		switch {
		case pat == "":
			return nil, fmt.Errorf("empty pattern in %s", clip(s))
		case strings.ContainsAny(pat, " \t"):
			return nil, fmt.Errorf("pattern %s contains white space", clip(item))
		case strings.Contains(pat, "/"):
			prefix, err := netip.ParsePrefix(pat)
			if err != nil {
				return nil, fmt.Errorf("malformed CIDR %s", clip(pat))
			}
			if prefix != prefix.Masked() {
				return nil, fmt.Errorf("CIDR %s has bits set beyond its /%d mask (did you mean %s?)",
					clip(pat), prefix.Bits(), prefix.Masked())
			}
			p.prefix = prefix
		default:
			if a, err := netip.ParseAddr(pat); err == nil && a.Zone() == "" {
				p.prefix = netip.PrefixFrom(a, a.BitLen())
			} else {
				p.glob = strings.ToLower(pat)
			}
		}
		l = append(l, p)
	}
	if !slices.ContainsFunc(l, func(p addrPattern) bool { return !p.negated }) {
		return nil, fmt.Errorf("%s has only negated patterns, so it admits no address (add \"*\"?)", clip(s))
	}
	return l, nil
}

// match reports whether addr is admitted: some positive pattern matches it and no negated one
// does. Globs are matched against the address text, since the server does no DNS look-ups (as
// sshd with its default UseDNS=no).
func (l addrList) match(addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	// sshd compares IPv4-mapped IPv6 peers as IPv4.
	addr = addr.Unmap().WithZone("")
	text := addr.String()
	admitted := false
	for _, p := range l {
		var m bool
		if p.prefix.IsValid() {
			m = p.prefix.Contains(addr)
		} else {
			m = globMatch(text, p.glob)
		}
		if m {
			if p.negated {
				return false
			}
			admitted = true
		}
	}
	return admitted
}
