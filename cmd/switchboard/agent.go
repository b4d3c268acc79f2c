package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/switchboard-dev/switchboard/internal/agent"
)

// agentFlags are the command line's settings; each one given overrides the
// config file's.
type agentFlags struct {
	configFile string
	logLevel   string
	forwards   []string
	cfg        agent.Config
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
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
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
	f.StringVar(&af.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
