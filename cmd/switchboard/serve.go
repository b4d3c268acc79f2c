package main

import (
	"io"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard-dev/switchboard/internal/server"
	"github.com/switchboard-dev/switchboard/internal/sshd"
)

// shutdownSlack is how long shutdown may take beyond --shutdown-grace (for
// closing connections, the broker and the state files).
const shutdownSlack = 10 * time.Second

func serveCommand(stderr io.Writer) *cobra.Command {
	o := server.Options{Version: version}
	var logLevel string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the switchboard server (the pivot devices and operators connect to)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			logger, err := newLogger(stderr, logLevel)
			if err != nil {
				return err
			}
			ctx, hup, stop := lifecycle()
			defer stop()
			reload := make(chan struct{}, 1)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						select {
						case reload <- struct{}{}:
						default: // a reload is already pending
						}
					}
				}
			}()
			// If shutdown overruns its bound, say where it is stuck and go:
			// a supervisor waiting on us is worse off than lost state.
			go func() {
				<-ctx.Done()
				time.Sleep(o.ShutdownGrace + shutdownSlack)
				logger.Error("shutdown is taking too long; goroutines follow, exiting", "after", (o.ShutdownGrace + shutdownSlack).String())
				pprof.Lookup("goroutine").WriteTo(stderr, 1)
				os.Exit(1)
			}()
			return server.Run(ctx, o, logger, reload)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", ":2222", "address to accept SSH connections on")
	f.StringVar(&o.StateDir, "state-dir", "./switchboard-data", "directory for the host key, authorized_keys and server state")
	f.StringVar(&o.AuthorizedKeys, "authorized-keys", "", "OpenSSH authorized_keys file (default STATE-DIR/authorized_keys)")
	f.StringArrayVar(&o.HostKeys, "host-key", nil, "host private key file; repeatable (default STATE-DIR/ssh_host_ed25519_key, created if missing)")
	f.StringVar(&o.Domain, "domain", "", "domain suffix operators may append to device names")
	f.StringVar(&o.PublicAddr, "public-addr", "", "HOST:PORT devices dial; recorded in STATE-DIR/public-addr for switchboard enroll")
	f.DurationVar(&o.KeepaliveInterval, "keepalive-interval", sshd.DefaultKeepaliveInterval, "how often to check that a client is alive")
	f.IntVar(&o.KeepaliveCount, "keepalive-count", sshd.DefaultKeepaliveCountMax, "unanswered keepalive intervals before a client is dropped")
	f.DurationVar(&o.HandshakeTimeout, "handshake-timeout", sshd.DefaultHandshakeTimeout, "time allowed to complete the SSH handshake and authentication")
	f.IntVar(&o.MaxUnauthPerSource, "max-unauth-per-source", sshd.DefaultMaxUnauthPerSource, "concurrent unauthenticated connections allowed from one IP address")
	f.IntVar(&o.MaxUnauth, "max-unauth", sshd.DefaultMaxUnauth, "concurrent unauthenticated connections allowed in all")
	f.IntVar(&o.MaxCircuits, "max-circuits", sshd.DefaultMaxCircuits, "open circuits allowed in all (each may hold up to 2 MiB while its operator is not reading)")
	f.IntVar(&o.MaxCircuitsPerKey, "max-circuits-per-key", sshd.DefaultMaxCircuitsPerKey, "open circuits allowed per operator key")
	f.StringSliceVar(&o.Ciphers, "ciphers", nil, "ciphers to offer, comma-separated (default: all x/crypto/ssh supports; the client's order decides)")
	f.StringVar(&o.MQTT.Mode, "mqtt", "embedded", "on-demand devices: embedded (a broker in this process), off, or an external mqtts://HOST:PORT")
	f.StringVar(&o.MQTT.Listen, "mqtt-listen", server.DefaultMQTTListen, "the embedded broker's address")
	f.StringSliceVar(&o.MQTT.Hosts, "mqtt-hosts", nil, "names and addresses in the embedded broker's certificate (default: the --public-addr host, localhost, 127.0.0.1)")
	f.StringVar(&o.MQTT.CA, "mqtt-ca", "", "external broker: the CA certificate that signed its certificate")
	f.StringVar(&o.MQTT.Cert, "mqtt-cert", "", "external broker: this server's client certificate (CN "+server.ServerIdentity+")")
	f.StringVar(&o.MQTT.Key, "mqtt-key", "", "external broker: the client certificate's key")
	f.StringVar(&o.MQTT.Prefix, "mqtt-prefix", "switchboard", "MQTT topic prefix")
	f.DurationVar(&o.MQTT.WakeTimeout, "wake-timeout", server.DefaultWakeTimeout, "how long a woken device has to connect")
	f.StringVar(&o.Metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9222)")
	f.BoolVar(&o.Pprof, "pprof", false, "with --metrics: also serve Go profiles at /debug/pprof/")
	f.DurationVar(&o.ShutdownGrace, "shutdown-grace", 5*time.Second, "how long open circuits may finish after SIGTERM")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
