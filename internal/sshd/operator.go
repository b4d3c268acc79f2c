package sshd

import (
	"context"
	"errors"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/circuit"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

// resolve turns what the operator typed into a canonical device name:
// case-insensitive, with the server's domain suffix optional.
func (s *Server) resolve(host string) (string, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if d := strings.ToLower(strings.Trim(s.cfg.Domain, ".")); d != "" {
		host = strings.TrimSuffix(host, "."+d)
	}
	return policy.CanonicalName(host)
}

// directTCPIP is the path of a circuit: parse, check the policy, open the
// device's channel, and only then accept the operator's channel and join the
// two. Every refusal carries one sentence for the operator.
func (c *conn) directTCPIP(nc ssh.NewChannel) {
	start := c.srv.cfg.Now()
	req, err := parseDirectTCPIP(nc.ExtraData())
	if err != nil {
		c.opLog.Warn("circuit", "result", "refused", "reason", err.Error())
		c.srv.cfg.Observer.CircuitRefused("malformed")
		nc.Reject(ssh.ConnectionFailed, "switchboard: malformed direct-tcpip request")
		return
	}
	log := c.opLog.With("target", req.Host, "port", req.Port)
	reject := func(r *refusal, cause error) {
		attrs := []any{"result", "refused", "refusal", r.sentence}
		if cause != nil {
			attrs = append(attrs, "reason", cause.Error())
		}
		log.Info("circuit", attrs...)
		c.srv.cfg.Observer.CircuitRefused(r.kind)
		nc.Reject(r.reason, r.sentence)
	}

	name, err := c.srv.resolve(req.Host)
	if err != nil {
		reject(noDevice(req.Host), err)
		return
	}
	log = log.With("device", name)
	p := c.srv.cfg.Policy()
	e, err := c.entry(p)
	switch {
	case err != nil:
		reject(notPermitted(name, req.Port), err)
		return
	case e.Roles&policy.Initiate == 0:
		reject(notPermitted(name, req.Port), errors.New(`the key has no access="initiate"`))
		return
	case !e.MayReach(name, req.Port):
		reject(notPermitted(name, req.Port), errors.New("not in the key's permitopen"))
		return
	}
	if ok, why := c.srv.circuitStarted(c.fp); !ok {
		reject(refuse("limit", ssh.ResourceShortage, "cannot open a circuit to %q: %s", name, why), nil)
		return
	}
	defer c.srv.circuitEnded(c.fp)

	// The open stops waiting if this operator's connection ends first; a
	// sleeping device gets its wake timeout on top.
	timeout := c.srv.cfg.OpenTimeout
	if ok, wake := c.srv.cfg.Board.CanWake(); ok {
		timeout += wake
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	devCh, dev, err := c.srv.cfg.Board.Open(ctx, name, req.Port, c.remote)
	cancel()
	if err != nil {
		reject(refusalFor(err, name, req.Port, p.Owner(name) != nil, c.srv.cfg.OpenTimeout, c.srv.cfg.Now()), err)
		return
	}
	opCh, opReqs, err := nc.Accept()
	if err != nil {
		devCh.Close()
		log.Info("circuit", "result", "refused", "reason", "operator went away: "+err.Error())
		return
	}
	go ssh.DiscardRequests(opReqs)
	setup := c.srv.cfg.Now().Sub(start)

	c.srv.cfg.Observer.CircuitOpened()
	st := circuit.Join(opCh, devCh)
	c.srv.cfg.Observer.CircuitClosed(st.AToB, st.BToA)
	if dev.Name() != name {
		log = log.With("primary", dev.Name())
	}
	log.Info("circuit", "result", "ok",
		"bytes_to_device", st.AToB, "bytes_from_device", st.BToA,
		"setup_ms", setup.Milliseconds(), "duration_ms", st.Duration.Milliseconds(),
		"close", st.Reason)
}
