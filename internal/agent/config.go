package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Forward is one virtual port the device offers and the local address that
// serves it.
type Forward struct {
	VPort  uint32
	Target string // host:port, dialled on the device for each circuit
}

func (f Forward) String() string { return fmt.Sprintf("%d:%s", f.VPort, f.Target) }

// ParseForward parses "[VPORT:]HOST:PORT" (IPv6 hosts in brackets); VPORT
// defaults to PORT.
func ParseForward(s string) (Forward, error) {
	target := s
	var vport string
	if i := strings.IndexByte(s, ':'); i > 0 && strings.Trim(s[:i], "0123456789") == "" {
		if _, _, err := net.SplitHostPort(s[i+1:]); err == nil {
			vport, target = s[:i], s[i+1:]
		}
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil || host == "" {
		return Forward{}, fmt.Errorf("forward %q: want [VPORT:]HOST:PORT", s)
	}
	tp, err := strconv.ParseUint(port, 10, 16)
	if err != nil || tp == 0 {
		return Forward{}, fmt.Errorf("forward %q: port %q is not 1-65535", s, port)
	}
	if vport == "" {
		vport = port
	}
	vp, err := strconv.ParseUint(vport, 10, 16)
	if err != nil || vp == 0 {
		return Forward{}, fmt.Errorf("forward %q: virtual port %q is not 1-65535", s, vport)
	}
	return Forward{VPort: uint32(vp), Target: target}, nil
}

// Config is the agent's configuration, from flags or a config file.
type Config struct {
	Server     string // host:port of the switchboard server
	Name       string // the device's name (the SSH user it logs in as)
	Identity   string // private key file
	KnownHosts string // OpenSSH known_hosts file pinning the server's host key
	Forwards   []Forward

	KeepaliveInterval time.Duration
	KeepaliveCount    int
	BackoffMin        time.Duration
	BackoffMax        time.Duration
	ConnectTimeout    time.Duration

	Version string

	// MQTT is set for an on-demand device: it waits for wake-ups instead of
	// holding an SSH connection.
	MQTT *MQTTConfig
}

// MQTTConfig is how an on-demand agent reaches the broker.
type MQTTConfig struct {
	URL      string // mqtts://HOST:PORT
	CA       string // CA certificate file that signed the broker's certificate
	Cert     string // the device's client certificate (CN = its name)
	Key      string // its key
	Prefix   string // topic prefix; empty: switchboard
	OnDemand OnDemand
}

// Defaults for the zero values of Config.
const (
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultKeepaliveCount    = 3
	DefaultBackoffMin        = time.Second
	DefaultBackoffMax        = time.Minute
	DefaultConnectTimeout    = 15 * time.Second
	DefaultForward           = "22:127.0.0.1:22"
)

// Validate fills defaults and reports the first thing missing or wrong, as
// a sentence naming the setting.
func (c *Config) Validate() error {
	switch {
	case c.Server == "":
		return errors.New("server is not set (--server HOST:PORT)")
	case c.Name == "":
		return errors.New("name is not set (--name NAME)")
	case c.Identity == "":
		return errors.New("identity is not set (--identity KEYFILE)")
	case c.KnownHosts == "":
		return errors.New("known_hosts is not set (--known-hosts FILE): the server's host key must be pinned")
	}
	if _, _, err := net.SplitHostPort(c.Server); err != nil {
		return fmt.Errorf("server %q: want HOST:PORT", c.Server)
	}
	if len(c.Forwards) == 0 {
		f, _ := ParseForward(DefaultForward)
		c.Forwards = []Forward{f}
	}
	seen := map[uint32]bool{}
	for _, f := range c.Forwards {
		if seen[f.VPort] {
			return fmt.Errorf("virtual port %d is forwarded twice", f.VPort)
		}
		seen[f.VPort] = true
	}
	if c.KeepaliveInterval == 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.KeepaliveCount == 0 {
		c.KeepaliveCount = DefaultKeepaliveCount
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if m := c.MQTT; m != nil {
		switch {
		case m.URL == "":
			return errors.New("on demand needs the broker (--mqtt mqtts://HOST:PORT)")
		case m.CA == "" || m.Cert == "" || m.Key == "":
			return errors.New("on demand needs --mqtt-ca, --mqtt-cert and --mqtt-key")
		}
	}
	switch {
	case c.KeepaliveInterval < 0 || c.KeepaliveCount < 0 || c.BackoffMin < 0 || c.ConnectTimeout < 0:
		return errors.New("durations and counts must be positive")
	case c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("backoff max %s is below backoff min %s", c.BackoffMax, c.BackoffMin)
	}
	return nil
}

// sameLink reports whether two configs dial the same server the same way,
// so that a reload can keep the connection and only change forwards.
func (c Config) sameLink(o Config) bool {
	return c.Server == o.Server && c.Name == o.Name && c.Identity == o.Identity &&
		c.KnownHosts == o.KnownHosts && c.KeepaliveInterval == o.KeepaliveInterval &&
		c.KeepaliveCount == o.KeepaliveCount && c.ConnectTimeout == o.ConnectTimeout
}

// fileConfig is the YAML config file, as `switchboard enroll` writes it.
type fileConfig struct {
	Server            string        `yaml:"server"`
	Name              string        `yaml:"name"`
	Identity          string        `yaml:"identity"`
	KnownHosts        string        `yaml:"known_hosts"`
	Forwards          []string      `yaml:"forwards"`
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
	KeepaliveCount    int           `yaml:"keepalive_count"`
	BackoffMin        time.Duration `yaml:"backoff_min"`
	BackoffMax        time.Duration `yaml:"backoff_max"`
	ConnectTimeout    time.Duration `yaml:"connect_timeout"`

	OnDemand    bool          `yaml:"on_demand"`
	MQTT        string        `yaml:"mqtt"`
	MQTTCA      string        `yaml:"mqtt_ca"`
	MQTTCert    string        `yaml:"mqtt_cert"`
	MQTTKey     string        `yaml:"mqtt_key"`
	MQTTPrefix  string        `yaml:"mqtt_prefix"`
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	MaxSession  time.Duration `yaml:"max_session"`
}

// LoadConfigFile reads a YAML config file. Unknown keys are errors, so a
// misspelt setting is reported instead of silently ignored.
func LoadConfigFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("agent: config: %w", err)
	}
	return ParseConfig(b, path)
}

// ParseConfig parses YAML config bytes; name is used in errors.
func ParseConfig(b []byte, name string) (Config, error) {
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) { // EOF: an empty file
		return Config{}, fmt.Errorf("agent: config %s: %w", name, err)
	}
	c := Config{
		Server: fc.Server, Name: fc.Name, Identity: fc.Identity, KnownHosts: fc.KnownHosts,
		KeepaliveInterval: fc.KeepaliveInterval, KeepaliveCount: fc.KeepaliveCount,
		BackoffMin: fc.BackoffMin, BackoffMax: fc.BackoffMax, ConnectTimeout: fc.ConnectTimeout,
	}
	if fc.OnDemand {
		c.MQTT = &MQTTConfig{URL: fc.MQTT, CA: fc.MQTTCA, Cert: fc.MQTTCert, Key: fc.MQTTKey, Prefix: fc.MQTTPrefix,
			OnDemand: OnDemand{IdleTimeout: fc.IdleTimeout, MaxSession: fc.MaxSession}}
	}
	for _, s := range fc.Forwards {
		f, err := ParseForward(s)
		if err != nil {
			return Config{}, fmt.Errorf("agent: config %s: %w", name, err)
		}
		c.Forwards = append(c.Forwards, f)
	}
	return c, nil
}
