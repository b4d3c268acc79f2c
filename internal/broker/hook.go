package broker

import (
	"bytes"
	"crypto/tls"
	"errors"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// maxKeepalive bounds the keepalive a client may ask for (AWS IoT Core's
// bound too): without one a half-dead device would never see its will
// message fire.
const maxKeepalive = 1200

// hook is the mochi hook that identifies clients by their certificate and
// applies the acl. mochi denies everything a hook does not allow.
type hook struct {
	mqtt.HookBase
	acl   acl
	srv   *mqtt.Server
	log   *slog.Logger
	admit func(identity string) error // nil: every known identity
}

// admitted asks Options.Admit about a device; the server is always let in.
func (h *hook) admitted(id string) error {
	if h.admit == nil || id == h.acl.server {
		return nil
	}
	return h.admit(id)
}

func (h *hook) ID() string { return "switchboard-acl" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPacketEncode}, []byte{b})
}

// errNoCert is why a connection without a verified client certificate is
// refused.
var errNoCert = errors.New("no verified client certificate")

// identity returns the common name of cl's verified client certificate.
func identity(cl *mqtt.Client) (string, error) {
	c, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return "", errNoCert
	}
	st := c.ConnectionState()
	if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return "", errNoCert
	}
	return st.PeerCertificates[0].Subject.CommonName, nil
}

// OnConnect admits a client whose client id is the name in its verified
// certificate, whose name the acl knows, and whose will message, if any,
// goes to a topic it may publish to. A refusal is answered with a CONNACK
// that says why, and logged.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	id, err := identity(cl)
	switch {
	case err != nil:
		return h.refuse(cl, packets.ErrNotAuthorized, "", err.Error())
	case cl.ID != id:
		return h.refuse(cl, packets.ErrClientIdentifierNotValid, id, "client id is not the certificate's name")
	case !h.acl.known(id):
		return h.refuse(cl, packets.ErrNotAuthorized, id, "certificate name is neither the server nor a valid device name")
	}
	if err := h.admitted(id); err != nil {
		return h.refuse(cl, packets.ErrNotAuthorized, id, err.Error())
	}
	switch {
	case pk.Connect.WillFlag && !h.acl.allow(id, pk.Connect.WillTopic, true):
		h.log.Warn("denied", "identity", id, "op", "will", "topic", pk.Connect.WillTopic)
		return h.refuse(cl, packets.ErrNotAuthorized, id, "will topic not allowed")
	}
	if cl.Properties.ProtocolVersion == 5 && (cl.State.Keepalive == 0 || cl.State.Keepalive > maxKeepalive) {
		cl.State.Keepalive = maxKeepalive
		cl.State.ServerKeepalive = true
	}
	return nil
}

// refuse sends a CONNACK with code, in the client's protocol version.
func (h *hook) refuse(cl *mqtt.Client, code packets.Code, id, why string) error {
	if cl.Properties.ProtocolVersion < 5 && code == packets.ErrNotAuthorized {
		code = packets.ErrBadUsernameOrPassword // mochi turns it into 3.1.1's "not authorized"
	}
	h.log.Warn("refused a connection", "remote", cl.Net.Remote, "client_id", cl.ID, "identity", id, "reason", why)
	_ = h.srv.SendConnack(cl, code, false, nil)
	return code
}

// OnConnectAuthenticate repeats OnConnect's identity check: mochi asks
// every hook that provides it, and one must say yes.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	id, err := identity(cl)
	return err == nil && id == cl.ID && h.acl.known(id) && h.admitted(id) == nil
}

// OnPacketEncode tells MQTT 5 clients the largest packet the broker takes
// (mochi enforces the limit but does not announce it), so that they can
// refuse an oversized message instead of losing their connection over it.
func (h *hook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode < 0x80 {
		pk.Properties.MaximumPacketSize = MaxPacketSize
	}
	return pk
}

// OnACLCheck applies the acl to a subscription (and to each delivery) or a
// publish, logging denials with the identity and topic.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if h.acl.allow(cl.ID, topic, write) {
		return true
	}
	op := "subscribe"
	if write {
		op = "publish"
	}
	h.log.Warn("denied", "identity", cl.ID, "op", op, "topic", topic)
	return false
}
