package agent

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/switchboard-dev/switchboard/internal/wake"
)

// OnDemand configures an agent that keeps only its MQTT connection and
// dials the server when woken.
type OnDemand struct {
	Topics wake.Topics
	// IdleTimeout hangs up once no circuit has been open this long.
	IdleTimeout time.Duration
	// MaxSession hangs up after this long whatever happens, so a leaked
	// circuit cannot keep a device on the line for ever.
	MaxSession time.Duration
}

// Defaults for OnDemand's zero values.
const (
	DefaultIdleTimeout = 60 * time.Second
	DefaultMaxSession  = 12 * time.Hour
)

// recentWakes is how many wake-up ids the agent remembers to ignore
// repeats (a QoS 1 redelivery, or a replay).
const recentWakes = 64

// onDemandState is what the agent last said of itself, so that a broker
// reconnection can say it again (a new broker may have lost retained
// messages).
type onDemandState struct {
	mu    sync.Mutex
	state string
	since time.Time
}

// StatePayload is the retained state message the agent would publish now,
// and what its will message should say if it vanishes: offline.
func (a *Agent) StatePayload(state string) []byte {
	cfg, _ := a.current()
	b, _ := json.Marshal(wake.State{V: wake.Version, State: state, Since: time.Now().UTC().Truncate(time.Second), Agent: cfg.Version})
	return b
}

// PublishState says the agent's current state again. Call it after every
// (re)connection to the broker.
func (a *Agent) PublishState(ctx context.Context, client wake.Client, topics wake.Topics) error {
	a.od.mu.Lock()
	st, since := a.od.state, a.od.since
	a.od.mu.Unlock()
	if st == "" {
		return nil
	}
	cfg, _ := a.current()
	b, _ := json.Marshal(wake.State{V: wake.Version, State: st, Since: since, Agent: cfg.Version})
	return client.Publish(ctx, topics.State(cfg.Name), b, true)
}

func (a *Agent) setState(ctx context.Context, client wake.Client, topics wake.Topics, state string) {
	a.od.mu.Lock()
	a.od.state, a.od.since = state, time.Now().UTC().Truncate(time.Second)
	a.od.mu.Unlock()
	// Said even as the agent stops, but briefly then: a broker out of reach
	// must not hold up SIGTERM (the will message covers that case).
	timeout := 10 * time.Second
	if ctx.Err() != nil {
		timeout = 2 * time.Second
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := a.PublishState(pctx, client, topics); err != nil {
		a.log.Warn("state not published", "state", state, "error", err.Error())
	}
}

// RunOnDemand waits for wake-ups on client and serves one session for each
// valid one, then goes back to sleep. It returns when ctx ends, after
// saying "offline".
func (a *Agent) RunOnDemand(ctx context.Context, client wake.Client, od OnDemand) error {
	if od.IdleTimeout <= 0 {
		od.IdleTimeout = DefaultIdleTimeout
	}
	if od.MaxSession <= 0 {
		od.MaxSession = DefaultMaxSession
	}
	cfg, _ := a.current()
	wakes := make(chan wake.Message, 1)
	cancel, err := client.Subscribe(ctx, od.Topics.Wake(cfg.Name), func(payload []byte, _ bool) {
		m, err := wake.ParseMessage(payload)
		if err != nil {
			a.log.Warn("wake ignored", "id", m.ID, "reason", "malformed wake-up: "+err.Error())
			return
		}
		select {
		case wakes <- m:
		default:
			a.log.Info("wake ignored", "id", m.ID, "reason", "another wake-up is being handled")
		}
	})
	if err != nil {
		return err
	}
	defer cancel()
	a.setState(ctx, client, od.Topics, wake.Asleep)
	a.log.Info("asleep", "topic", od.Topics.Wake(cfg.Name))

	var seen []string // recent wake ids, oldest first
	for {
		var m wake.Message
		select {
		case <-ctx.Done():
			a.setState(ctx, client, od.Topics, wake.Offline)
			return nil
		case m = <-wakes:
		}
		switch {
		case time.Now().After(m.Expires):
			a.log.Warn("wake ignored", "id", m.ID, "reason", "expired at "+m.Expires.Format(time.RFC3339))
			continue
		case slices.Contains(seen, m.ID):
			a.log.Info("wake ignored", "id", m.ID, "reason", "already handled")
			continue
		}
		seen = append(seen, m.ID)
		if len(seen) > recentWakes {
			seen = seen[1:]
		}
		// Only a server whose key we already trust: a forged wake-up can
		// at worst make the device dial a server that fails the handshake.
		cfg, _ = a.current()
		cfg.Server = m.Server
		crd, err := loadCredentials(cfg)
		if err != nil {
			a.log.Error("wake refused", "id", m.ID, "server", m.Server, "reason", err.Error())
			continue
		}
		a.log.Info("woken", "id", m.ID, "server", m.Server)
		a.setState(ctx, client, od.Topics, wake.Connecting)
		up, err := a.session(ctx, sessionOpts{
			server: m.Server, crd: &crd, idle: od.IdleTimeout, maxLen: od.MaxSession,
			registered: func() { a.setState(ctx, client, od.Topics, wake.Connected) },
		})
		switch {
		case ctx.Err() != nil:
			a.setState(ctx, client, od.Topics, wake.Offline)
			return nil
		case errors.Is(err, errIdle):
		default:
			a.log.Warn("session ended", "reason", err.Error(), "up", up.Round(time.Second).String())
		}
		a.setState(ctx, client, od.Topics, wake.Asleep)
		a.log.Info("asleep", "topic", od.Topics.Wake(cfg.Name))
	}
}
