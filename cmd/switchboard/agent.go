package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/switchboard-dev/switchboard/internal/agent"
	"github.com/switchboard-dev/switchboard/internal/mqttc"
	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/wake"
)

// agentFlags are the command line's settings; each one given overrides the
// config file's.
type agentFlags struct {
	configFile string
	logLevel   string
	forwards   []string
	cfg        agent.Config
	onDemand   bool
	mqtt       agent.MQTTConfig
}

// config merges the config file (if any) with the flags that were set, so
// SIGHUP can call it again to pick up an edited file.
func (af *agentFlags) config(flags *pflag.FlagSet) (agent.Config, error) {
	c := agent.Config{}
	if af.configFile != "" {
		var err error
		if c, err = agent.LoadConfigFile(af.configFile); err != nil {
			return c, err
		}
	}
	set := func(name string, apply func()) {
		if flags.Changed(name) || af.configFile == "" {
			apply()
		}
	}
	set("server", func() { c.Server = af.cfg.Server })
	set("name", func() { c.Name = af.cfg.Name })
	set("identity", func() { c.Identity = af.cfg.Identity })
	set("known-hosts", func() { c.KnownHosts = af.cfg.KnownHosts })
	set("keepalive-interval", func() { c.KeepaliveInterval = af.cfg.KeepaliveInterval })
	set("keepalive-count", func() { c.KeepaliveCount = af.cfg.KeepaliveCount })
	set("backoff-min", func() { c.BackoffMin = af.cfg.BackoffMin })
	set("backoff-max", func() { c.BackoffMax = af.cfg.BackoffMax })
	set("connect-timeout", func() { c.ConnectTimeout = af.cfg.ConnectTimeout })
	if flags.Changed("on-demand") && !af.onDemand {
		c.MQTT = nil
	}
	if af.onDemand || c.MQTT != nil {
		if c.MQTT == nil {
			c.MQTT = &agent.MQTTConfig{}
		}
		m := c.MQTT
		set("mqtt", func() { m.URL = af.mqtt.URL })
		set("mqtt-ca", func() { m.CA = af.mqtt.CA })
		set("mqtt-cert", func() { m.Cert = af.mqtt.Cert })
		set("mqtt-key", func() { m.Key = af.mqtt.Key })
		set("mqtt-prefix", func() { m.Prefix = af.mqtt.Prefix })
		set("idle-timeout", func() { m.OnDemand.IdleTimeout = af.mqtt.OnDemand.IdleTimeout })
		set("max-session", func() { m.OnDemand.MaxSession = af.mqtt.OnDemand.MaxSession })
	}
	if flags.Changed("forward") {
		c.Forwards = nil
		for _, s := range af.forwards {
			f, err := agent.ParseForward(s)
			if err != nil {
				return c, usageError{err}
			}
			c.Forwards = append(c.Forwards, f)
		}
	}
	c.Version = version
	return c, c.Validate()
}

func agentCommand(stderr io.Writer) *cobra.Command {
	af := &agentFlags{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run on a device: keep a reverse tunnel to the switchboard server",
		Long: `Run on a device: dial the server, pin its host key, register the device's
virtual ports and serve each circuit from a local address; reconnect forever
with jittered backoff. SIGHUP re-reads --config; SIGTERM stops and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(stderr, af.logLevel)
			if err != nil {
				return err
			}
			cfg, err := af.config(cmd.Flags())
			if err != nil {
				if _, ok := err.(usageError); ok || af.configFile == "" {
					return usageError{err}
				}
				return err
			}
			a, err := agent.New(cfg, logger)
			if err != nil {
				return err
			}
			ctx, hup, stop := lifecycle()
			defer stop()
			done := make(chan error, 1)
			if cfg.MQTT != nil {
				client, err := dialBrokerForever(ctx, a, cfg, logger)
				if err != nil {
					return err
				}
				if client == nil {
					return nil // stopped while waiting
				}
				defer client.Close()
				od := cfg.MQTT.OnDemand
				od.Topics = wake.Topics{Prefix: cfg.MQTT.Prefix}
				go func() { done <- a.RunOnDemand(ctx, client, od) }()
			} else {
				go func() { done <- a.Run(ctx) }()
			}
			for {
				select {
				case err := <-done:
					return err
				case <-hup:
					cfg, err := af.config(cmd.Flags())
					if err == nil {
						err = a.Reload(cfg)
					}
					if err != nil {
						logger.Error("reload failed; keeping the old configuration", "error", err.Error())
					}
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&af.configFile, "config", "", "YAML config file (flags given on the command line override it)")
	f.StringVar(&af.cfg.Server, "server", "", "the switchboard server, HOST:PORT")
	f.StringVar(&af.cfg.Name, "name", "", "this device's name")
	f.StringVar(&af.cfg.Identity, "identity", "", "the device's private key file")
	f.StringVar(&af.cfg.KnownHosts, "known-hosts", "", "known_hosts file pinning the server's host key")
	f.StringArrayVar(&af.forwards, "forward", nil, "[VPORT:]HOST:PORT to offer; repeatable (default "+agent.DefaultForward+")")
	f.DurationVar(&af.cfg.KeepaliveInterval, "keepalive-interval", agent.DefaultKeepaliveInterval, "how often to check the server is alive")
	f.IntVar(&af.cfg.KeepaliveCount, "keepalive-count", agent.DefaultKeepaliveCount, "unanswered keepalive intervals before reconnecting")
	f.DurationVar(&af.cfg.BackoffMin, "backoff-min", agent.DefaultBackoffMin, "first reconnect delay ceiling")
	f.DurationVar(&af.cfg.BackoffMax, "backoff-max", agent.DefaultBackoffMax, "largest reconnect delay ceiling")
	f.DurationVar(&af.cfg.ConnectTimeout, "connect-timeout", agent.DefaultConnectTimeout, "time allowed to connect and authenticate, and to reach a local target")
	f.BoolVar(&af.onDemand, "on-demand", false, "wait for wake-ups over MQTT instead of holding an SSH connection")
	f.StringVar(&af.mqtt.URL, "mqtt", "", "on demand: the broker, mqtts://HOST:PORT")
	f.StringVar(&af.mqtt.CA, "mqtt-ca", "", "on demand: CA certificate file that signed the broker's certificate")
	f.StringVar(&af.mqtt.Cert, "mqtt-cert", "", "on demand: this device's client certificate (CN = its name)")
	f.StringVar(&af.mqtt.Key, "mqtt-key", "", "on demand: the client certificate's key")
	f.StringVar(&af.mqtt.Prefix, "mqtt-prefix", wake.DefaultPrefix, "on demand: topic prefix")
	f.DurationVar(&af.mqtt.OnDemand.IdleTimeout, "idle-timeout", agent.DefaultIdleTimeout, "on demand: hang up after this long with no circuit")
	f.DurationVar(&af.mqtt.OnDemand.MaxSession, "max-session", agent.DefaultMaxSession, "on demand: hang up after this long whatever happens")
	f.StringVar(&af.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// dialBrokerForever dials until it succeeds or ctx ends (then it returns
// nil, nil). A refusal (not enrolled yet, a certificate the broker does not
// trust) is logged and retried with backoff like any failure: it may be
// fixed on the server while the device waits.
func dialBrokerForever(ctx context.Context, a *agent.Agent, cfg agent.Config, logger *slog.Logger) (*mqttc.Client, error) {
	bo := agent.Backoff{Min: cfg.BackoffMin, Max: cfg.BackoffMax}
	for attempt := 1; ; attempt++ {
		client, err := dialBroker(ctx, a, cfg, logger)
		var ue usageError
		switch {
		case err == nil:
			return client, nil
		case errors.As(err, &ue):
			return nil, err
		case ctx.Err() != nil:
			return nil, nil
		}
		wait := bo.Next()
		logger.Warn("waiting", "reason", err.Error(), "backoff", wait.Round(time.Millisecond).String(), "attempt", attempt)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(wait):
		}
	}
}

// dialBroker connects an on-demand agent to its broker: client id = the
// device's name (the certificate's CN), a will that says "offline", and its
// state said again after every reconnection.
func dialBroker(ctx context.Context, a *agent.Agent, cfg agent.Config, logger *slog.Logger) (*mqttc.Client, error) {
	m := cfg.MQTT
	u, err := url.Parse(m.URL)
	if err != nil || u.Hostname() == "" {
		return nil, usageError{fmt.Errorf("--mqtt %q: want mqtts://HOST:PORT", m.URL)}
	}
	tlsConf, err := pki.LoadClientTLS(m.CA, m.Cert, m.Key, u.Hostname())
	if err != nil {
		return nil, err
	}
	topics := wake.Topics{Prefix: m.Prefix}
	// OnConnect may run before Dial returns; the first state is said by
	// RunOnDemand, so until then there is nothing to repeat.
	var dialled atomic.Pointer[mqttc.Client]
	client, err := mqttc.Dial(ctx, mqttc.Options{
		URL:      m.URL,
		ClientID: cfg.Name,
		TLS:      tlsConf,
		Will:     &mqttc.Will{Topic: topics.State(cfg.Name), Payload: a.StatePayload(wake.Offline), Retain: true},
		OnConnect: func(ctx context.Context) {
			// A restarted broker may have lost retained messages.
			if c := dialled.Load(); c != nil {
				if err := a.PublishState(ctx, c, topics); err != nil {
					logger.Warn("state not republished", "error", err.Error())
				}
			}
		},
		Logger: logger,
	})
	if err != nil {
		return nil, fmt.Errorf("broker %s: %w", m.URL, err)
	}
	dialled.Store(client)
	return client, nil
}
