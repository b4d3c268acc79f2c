package broker

import (
	"strings"

	"github.com/switchboard-dev/switchboard/internal/wake"
)

// acl decides who may use which topic. It is pure: identities are the
// verified certificate names, topics are what the client sent.
type acl struct {
	topics wake.Topics
	server string // the server's identity
}

// known reports whether identity may connect at all: the server, or a
// device with a valid name.
func (a acl) known(identity string) bool {
	return identity == a.server || validName(identity)
}

// allow reports whether identity may publish to topic (write) or
// subscribe to and receive from topic (!write). A device may subscribe
// only to its own wake topic and publish only to its own state topic,
// exactly, without wildcards; the server may do anything under the prefix.
func (a acl) allow(identity, topic string, write bool) bool {
	if identity == a.server {
		return strings.HasPrefix(topic, a.topics.Prefix+"/")
	}
	if !validName(identity) {
		return false
	}
	if write {
		return topic == a.topics.State(identity)
	}
	return topic == a.topics.Wake(identity)
}

// validName reports whether s is a device name as it appears in a
// certificate and in topics: 1–63 lower-case letters, digits, '-', '_' and
// '.', not starting or ending with '.', without "..". It is
// policy.CanonicalName's rule restricted to canonical (lower-case) names,
// kept here so that the broker does not depend on the policy package.
func validName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validPrefix reports whether p can head every topic: one or more
// non-empty levels without wildcards, not a $-topic.
func validPrefix(p string) bool {
	if p == "" || strings.HasPrefix(p, "$") || strings.ContainsAny(p, "+#\x00") {
		return false
	}
	for _, level := range strings.Split(p, "/") {
		if level == "" {
			return false
		}
	}
	return true
}
