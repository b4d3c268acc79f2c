// Package server assembles `switchboard serve`: the state dir, host keys,
// the authorized_keys store with its reloads, the board and the SSH front
// end, and runs them until the context ends.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/hostkey"
	"github.com/switchboard-dev/switchboard/internal/metrics"
	"github.com/switchboard-dev/switchboard/internal/policy"
	"github.com/switchboard-dev/switchboard/internal/sshd"
)

// Options is the server's configuration, read once from the command line.
type Options struct {
	Listen         string
	StateDir       string
	AuthorizedKeys string   // default StateDir/authorized_keys
	HostKeys       []string // default StateDir/ssh_host_ed25519_key, created if missing
	Domain         string
	// PublicAddr is the HOST:PORT devices dial; it is written to the state
	// dir so that `switchboard enroll` can pin the host key under it.
	PublicAddr string

	KeepaliveInterval  time.Duration
	KeepaliveCount     int
	HandshakeTimeout   time.Duration
	MaxUnauthPerSource int
	MaxUnauth          int
	MaxCircuits        int
	MaxCircuitsPerKey  int
	Ciphers            []string
	MQTT               MQTTOptions
	// Metrics is where to serve Prometheus metrics ("" for nowhere); Pprof
	// adds /debug/pprof/ there.
	Metrics string
	Pprof   bool
	// ShutdownGrace is how long open circuits may run on after SIGTERM.
	ShutdownGrace time.Duration

	Version string
}

// supportedCiphers are the ciphers x/crypto/ssh implements that --ciphers
// may name.
var supportedCiphers = []string{
	"chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
	"aes128-ctr", "aes192-ctr", "aes256-ctr",
}

// PublicAddrFile records --public-addr in the state dir for enroll.
const PublicAddrFile = "public-addr"

// DefaultHostKeyFile is the host key created in the state dir.
const DefaultHostKeyFile = "ssh_host_ed25519_key"

// Validate fills the defaults that depend on other options and checks the
// rest; its errors are usage errors.
func (o *Options) Validate() error {
	if o.Listen == "" {
		return errors.New("--listen must not be empty")
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	if o.StateDir == "" {
		return errors.New("--state-dir must not be empty")
	}
	if o.AuthorizedKeys == "" {
		o.AuthorizedKeys = filepath.Join(o.StateDir, "authorized_keys")
	}
	if o.PublicAddr != "" {
		if h, _, err := net.SplitHostPort(o.PublicAddr); err != nil || h == "" {
			return fmt.Errorf("--public-addr %q: want HOST:PORT", o.PublicAddr)
		}
	}
	if o.Domain != "" {
		if _, err := policy.CanonicalName(o.Domain); err != nil {
			return fmt.Errorf("--domain %q: %w", o.Domain, err)
		}
	}
	switch {
	case o.KeepaliveInterval < 0, o.KeepaliveCount < 0, o.HandshakeTimeout < 0, o.ShutdownGrace < 0:
		return errors.New("durations and counts must not be negative")
	case o.MaxUnauthPerSource < 0 || o.MaxUnauth < 0 || o.MaxCircuits < 0 || o.MaxCircuitsPerKey < 0:
		return errors.New("limits must not be negative")
	}
	if o.Pprof && o.Metrics == "" {
		return errors.New("--pprof needs --metrics ADDR to serve on")
	}
	if err := o.MQTT.validate(); err != nil {
		return err
	}
	for _, c := range o.Ciphers {
		if !slices.Contains(supportedCiphers, c) {
			return fmt.Errorf("--ciphers: %q is not one of %s", c, strings.Join(supportedCiphers, ", "))
		}
	}
	return nil
}

// Run serves until ctx ends, then shuts down gracefully. Each value received
// on reload (SIGHUP) re-reads authorized_keys; the file is also watched.
func Run(ctx context.Context, o Options, logger *slog.Logger, reload <-chan struct{}) error {
	if err := o.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("server: state dir: %w", err)
	}
	keys, err := loadHostKeys(o, logger)
	if err != nil {
		return err
	}
	if o.PublicAddr != "" {
		if err := os.WriteFile(filepath.Join(o.StateDir, PublicAddrFile), []byte(o.PublicAddr+"\n"), 0o644); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	store := policy.NewStore(o.AuthorizedKeys, logger.With("component", "policy"))
	if _, err := store.Load(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	b := board.New(time.Now)
	m := metrics.New()
	b.SetWakeObserver(m.Wake)
	seenPath := filepath.Join(o.StateDir, LastSeenFile)
	if seen, err := loadLastSeen(seenPath); err != nil {
		// Keep the bad file for inspection rather than overwrite it.
		aside := seenPath + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z")
		logger.Warn("last-seen file unreadable; set aside, starting empty", "error", err.Error(), "moved_to", aside)
		os.Rename(seenPath, aside)
	} else {
		b.Remember(seen)
	}
	if mode := o.MQTT.Mode; mode != "off" {
		public := publicAddress(o)
		if o.PublicAddr == "" {
			logger.Warn("wake-ups will tell devices to dial "+public+"; set --public-addr to the address they reach", "public_addr", public)
		}
		od, err := startOnDemand(ctx, o, public, store.Policy, logger)
		if err != nil {
			return err
		}
		defer od.close()
		timeout := o.MQTT.WakeTimeout
		if timeout == 0 {
			timeout = DefaultWakeTimeout
		}
		b.SetWaker(od.waker, timeout)
	}
	srv, err := sshd.New(sshd.Config{
		HostKeys:           keys,
		Policy:             store.Policy,
		Board:              b,
		Logger:             logger,
		Domain:             o.Domain,
		KeepaliveInterval:  o.KeepaliveInterval,
		KeepaliveCountMax:  o.KeepaliveCount,
		HandshakeTimeout:   o.HandshakeTimeout,
		MaxUnauthPerSource: o.MaxUnauthPerSource,
		MaxUnauth:          o.MaxUnauth,
		MaxCircuits:        o.MaxCircuits,
		MaxCircuitsPerKey:  o.MaxCircuitsPerKey,
		Ciphers:            o.Ciphers,
		Observer:           m,
		Version:            o.Version,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if o.Metrics != "" {
		stop, err := serveMetrics(o.Metrics, m.Handler(o.Pprof), logger)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}

	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if err := store.Watch(watchCtx, srv.Revalidate); err != nil {
			// Said at once: until fixed, only SIGHUP reloads the file.
			logger.Error("authorized_keys is not watched; reload it with SIGHUP", "error", err.Error())
		}
	}()
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		saved := uint64(0)
		tick := time.NewTicker(lastSeenEvery)
		defer tick.Stop()
		for {
			select {
			case <-watchCtx.Done():
				return
			case <-reload:
				p, err := store.Load()
				if err != nil {
					logger.Error("authorized_keys reload failed; keeping the previous keys", "error", err.Error())
					continue
				}
				srv.Revalidate(p)
			case <-tick.C:
				saved = saveSeen(b, seenPath, saved, false, logger)
			}
		}
	}()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-serveDone:
	}
	grace, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
	defer cancel()
	shutErr := srv.Shutdown(grace)
	if serveErr == nil {
		serveErr = <-serveDone
	}
	stopWatch()
	<-reloadDone
	// After Shutdown every device has been detached, so this records them all.
	saveSeen(b, seenPath, 0, true, logger)
	<-watchDone
	if errors.Is(serveErr, sshd.ErrServerClosed) {
		serveErr = nil
	}
	if shutErr != nil {
		logger.Warn("shutdown cut open circuits", "error", shutErr)
	}
	return serveErr
}

// serveMetrics serves h on addr until stop is called.
func serveMetrics(addr string, h http.Handler, logger *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	logger.Info("metrics listening", "addr", ln.Addr().String())
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.Serve(ln)
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
		<-done
	}, nil
}

// lastSeenEvery is how often changed last-seen times are written: a crash
// loses at most this much of them.
const lastSeenEvery = 30 * time.Second

// saveSeen writes the board's last-seen times if they changed since the
// version saved (or if forced), and returns the version now on disk.
func saveSeen(b *board.Board, path string, saved uint64, force bool, logger *slog.Logger) uint64 {
	seen, version := b.Seen()
	if version == saved && !force {
		return saved
	}
	if err := saveLastSeen(path, seen); err != nil {
		logger.Warn("last-seen times not saved", "error", err.Error())
		return saved
	}
	return version
}

func loadHostKeys(o Options, logger *slog.Logger) ([]ssh.Signer, error) {
	if len(o.HostKeys) == 0 {
		path := filepath.Join(o.StateDir, DefaultHostKeyFile)
		k, created, err := hostkey.LoadOrCreate(path)
		if err != nil {
			return nil, err
		}
		if created {
			logger.Info("host key created", "path", path, "fingerprint", ssh.FingerprintSHA256(k.PublicKey()))
		}
		return []ssh.Signer{k}, nil
	}
	var keys []ssh.Signer
	for _, path := range o.HostKeys {
		k, err := hostkey.Load(path)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}
