// Package enroll gives a new device or operator its key pair, authorises the key in the
// server's authorized_keys, and writes the files the device or operator needs to connect.
package enroll

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

// Role is what an enrolled key may do: be reached as a device, or reach devices.
type Role string

const (
	// Device is a listening client: its line says access="listen",hostname="NAME".
	Device Role = "device"
	// Operator is an initiator: its line says access="initiate".
	Operator Role = "operator"
)

// Names of the files enroll writes in the output directory and reads in the state dir.
const (
	KeyFile        = "id_ed25519"            // the new private key (mode 0600)
	PubFile        = "id_ed25519.pub"        // its public half
	KnownHostsFile = "known_hosts"           // the server's host key for the server address
	AgentFile      = "agent.yaml"            // devices only: the agent's configuration
	MQTTCAFile     = "mqtt-ca.pem"           // on demand: the CA that signed the broker's certificate
	MQTTCertFile   = "mqtt.crt"              // on demand: the device's client certificate (CN = NAME)
	MQTTKeyFile    = "mqtt.key"              // on demand: its key
	PublicAddrFile = "public-addr"           // in the state dir: written by serve --public-addr
	HostKeyFile    = "ssh_host_ed25519_key"  // in the state dir: the server's host key
	DefaultForward = "22:127.0.0.1:22"       // a device's forward when none is given
	DefaultDevDir  = "/etc/switchboard"      // where the output directory goes on a device
	deviceMarker   = "switchboard-device:"   // comment prefix of the lines enroll writes for devices
	operatorMarker = "switchboard-operator:" // comment prefix of the lines enroll writes for operators
)

// Options is one enrolment, read once from the command line. Call Validate before Run.
type Options struct {
	Name     string // the device's or operator's name; canonical (lower case) after Validate
	Role     Role
	Out      string // directory for the key pair and the other files; created with mode 0700
	StateDir string // the server's state dir

	// Server is the HOST:PORT devices and operators dial; empty: STATE-DIR/public-addr.
	Server string
	// AuthorizedKeys is the file to edit; empty: STATE-DIR/authorized_keys.
	AuthorizedKeys string
	// HostKey is the server's host private key file, whose public half is read from
	// HostKey+".pub" (or derived from the private key); empty: STATE-DIR/ssh_host_ed25519_key.
	HostKey string
	// Force replaces existing files in Out and rotates an existing enrolment of Name.
	Force bool

	// Forwards are the device's [VPORT:]HOST:PORT forwards; empty: DefaultForward.
	Forwards []string
	// DeviceDir is where Out will be copied on the device (absolute); empty: DefaultDevDir.
	DeviceDir string
	// OnDemand enrols a device that waits for wake-ups over MQTT: it gets a client
	// certificate from the server's MQTT CA (created in the state dir if need be).
	OnDemand bool
	// MQTTURL is the broker the device dials; empty: mqtts://SERVER-HOST:8883.
	MQTTURL string
}

// Validate fills in the defaults and checks the options; its errors are usage errors.
func (o *Options) Validate() error {
	name, err := policy.CanonicalName(o.Name)
	if err != nil {
		return fmt.Errorf("NAME %q: %w", o.Name, err)
	}
	o.Name = name
	if name == mqttServerIdentity {
		return fmt.Errorf("NAME %q is reserved: it is the server's own MQTT identity", name)
	}
	switch o.Role {
	case Device, Operator:
	case "":
		return errors.New("--role is needed: device or operator")
	default:
		return fmt.Errorf("--role %q: want device or operator", string(o.Role))
	}
	if o.Out == "" {
		return errors.New("--out DIR is needed (where the new key and files go)")
	}
	if o.StateDir == "" {
		return errors.New("--state-dir must not be empty")
	}
	if o.AuthorizedKeys == "" {
		o.AuthorizedKeys = filepath.Join(o.StateDir, "authorized_keys")
	}
	if o.HostKey == "" {
		o.HostKey = filepath.Join(o.StateDir, HostKeyFile)
	}
	if o.Server != "" {
		s, err := ParseServer(o.Server)
		if err != nil {
			return fmt.Errorf("--server: %w", err)
		}
		o.Server = s
	}
	if o.Role == Operator {
		if len(o.Forwards) > 0 {
			return errors.New("--forward is for devices, not operators")
		}
		if o.OnDemand || o.MQTTURL != "" {
			return errors.New("--on-demand is for devices, not operators")
		}
		return nil
	}
	if o.MQTTURL != "" && !strings.HasPrefix(o.MQTTURL, "mqtts://") {
		return fmt.Errorf("--mqtt-url %q: want mqtts://HOST:PORT", o.MQTTURL)
	}
	if len(o.Forwards) == 0 {
		o.Forwards = []string{DefaultForward}
	}
	for _, f := range o.Forwards {
		if err := checkForward(f); err != nil {
			return fmt.Errorf("--forward %q: %w", f, err)
		}
	}
	if o.DeviceDir == "" {
		o.DeviceDir = DefaultDevDir
	}
	if !path.IsAbs(o.DeviceDir) || !utf8.ValidString(o.DeviceDir) || strings.ContainsFunc(o.DeviceDir, isControl) {
		return fmt.Errorf("--device-dir %q: want an absolute path on the device", o.DeviceDir)
	}
	o.DeviceDir = path.Clean(o.DeviceDir)
	return nil
}

// Result says what Run did, for the caller to tell the user.
type Result struct {
	Name        string
	Role        Role
	Fingerprint string // SHA256 fingerprint of the new key
	Server      string // the HOST:PORT written to known_hosts (and agent.yaml)

	Dir   string   // the output directory, absolute
	Files []string // the files written there, absolute, in the order written

	AuthorizedKeys string // the file edited, absolute (after following a symlink)
	Line           int    // the new key's line number in it
	Replaced       []int  // line numbers (in the old file) of the lines removed by a rotation

	// DeviceDir and AgentConfig are where Dir and agent.yaml will be on the device.
	DeviceDir, AgentConfig string

	// Warnings are things the user should know and may have to act on, one sentence each.
	Warnings []string
}

// ExistsError is returned when Name is already enrolled and Force is not set.
type ExistsError struct {
	Role Role
	Name string
	File string // the authorized_keys file
	Line int    // the first line that enrols the name
}

// Error returns one sentence saying where the enrolment is and how to rotate it.
func (e *ExistsError) Error() string {
	file := "authorized_keys"
	if e.File != "" {
		file = filepath.Base(e.File)
	}
	return fmt.Sprintf("enroll: %s %q is already enrolled (%s line %d); use --force to rotate its key",
		e.Role, e.Name, file, e.Line)
}

// Run enrols o.Name: it generates a key pair, edits authorized_keys under a lock, and writes
// the key pair, known_hosts and (for a device) agent.yaml into o.Out. Nothing is written when
// the name is already enrolled and o.Force is not set. ctx bounds the wait for the lock.
func Run(ctx context.Context, o Options) (*Result, error) {
	server := o.Server
	if server == "" {
		s, err := PublicAddr(o.StateDir)
		if errors.Is(err, ErrNoPublicAddr) {
			return nil, errors.New("enroll: --server HOST:PORT is needed (the address devices dial), or start the server once with --public-addr")
		}
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		server = s
	}
	hostKey, err := ReadHostKey(o.HostKey)
	if errors.Is(err, ErrNoHostKey) {
		if filepath.Clean(o.HostKey) == filepath.Join(o.StateDir, HostKeyFile) {
			return nil, fmt.Errorf("enroll: no host key in %s; start `switchboard serve` once first", o.StateDir)
		}
		return nil, fmt.Errorf("enroll: no host key at %s; start `switchboard serve` once first", o.HostKey)
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}

	dir, err := filepath.Abs(o.Out)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	files := []string{KeyFile, PubFile, KnownHostsFile}
	if o.Role == Device {
		files = append(files, AgentFile)
	}
	if o.OnDemand {
		files = append(files, MQTTCAFile, MQTTCertFile, MQTTKeyFile)
	}
	if !o.Force {
		for _, f := range files {
			if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
				return nil, fmt.Errorf("enroll: %s already exists; use --force to replace it", filepath.Join(dir, f))
			}
		}
	}

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("enroll: generate key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	comment := marker(o.Role) + o.Name
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	pubText := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))

	res := &Result{
		Name: o.Name, Role: o.Role, Fingerprint: ssh.FingerprintSHA256(sshPub), Server: server, Dir: dir,
	}
	contents := map[string][]byte{
		KeyFile:        pem.EncodeToMemory(block),
		PubFile:        []byte(pubText + " " + comment + "\n"),
		KnownHostsFile: []byte(KnownHostsLine(server, hostKey) + "\n"),
	}
	if o.OnDemand {
		if o.MQTTURL == "" {
			host, _, _ := net.SplitHostPort(server)
			o.MQTTURL = "mqtts://" + net.JoinHostPort(host, "8883")
		}
		ca, _, err := pki.LoadOrCreateCA(o.StateDir)
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		certPEM, keyPEM, err := ca.Issue(o.Name, pki.ClientCert, nil, mqttCertValidity)
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		contents[MQTTCAFile], contents[MQTTCertFile], contents[MQTTKeyFile] = ca.CertPEM(), certPEM, keyPEM
	}
	if o.Role == Device {
		res.DeviceDir = o.DeviceDir
		res.AgentConfig = path.Join(o.DeviceDir, AgentFile)
		contents[AgentFile] = agentConfig(o, server)
	}

	var created []string
	akPath, warnings, err := editAuthorizedKeys(ctx, o.AuthorizedKeys, func(data []byte) ([]byte, error) {
		out, ed, err := rewrite(data, o.Role, o.Name, AuthorizedLine(o.Role, o.Name, pubText), o.Force)
		if err != nil {
			var ee *ExistsError
			if errors.As(err, &ee) {
				ee.File = o.AuthorizedKeys
			}
			return nil, err
		}
		res.Line, res.Replaced, res.Warnings = ed.line, ed.removed, ed.warnings
		// The private key goes to disk before the line that authorises it, so that a
		// failure leaves at worst an unused key, never an authorised key nobody holds.
		res.Files, created, err = writeOut(dir, files, contents, o.Force)
		return out, err
	})
	if err != nil {
		for _, f := range created {
			os.Remove(f)
		}
		return nil, err
	}
	res.AuthorizedKeys = akPath
	res.Warnings = append(res.Warnings, warnings...)
	return res, nil
}

// marker returns the comment prefix of the lines enroll writes for role.
func marker(r Role) string {
	if r == Device {
		return deviceMarker
	}
	return operatorMarker
}

// AuthorizedLine returns the authorized_keys line enroll writes for name, without a line end.
// key is "ssh-ed25519 AAAA…".
func AuthorizedLine(r Role, name, key string) string {
	if r == Device {
		return fmt.Sprintf(`%s %s %s%s`, deviceOptions(name), key, deviceMarker, name)
	}
	return fmt.Sprintf(`%s %s %s%s`, operatorOptions, key, operatorMarker, name)
}

// operatorOptions are the options of an operator line enroll writes.
const operatorOptions = `access="initiate"`

// deviceOptions returns the options of a device line enroll writes.
func deviceOptions(name string) string {
	return fmt.Sprintf(`access="listen",hostname="%s"`, name)
}

// agentConfig returns agent.yaml for a device, with paths as they will be on the device.
func agentConfig(o Options, server string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# switchboard agent configuration for %s (written by switchboard enroll)\n", o.Name)
	fmt.Fprintf(&b, "server: %s\n", yamlQuote(server))
	fmt.Fprintf(&b, "name: %s\n", yamlQuote(o.Name))
	fmt.Fprintf(&b, "identity: %s\n", yamlQuote(path.Join(o.DeviceDir, KeyFile)))
	fmt.Fprintf(&b, "known_hosts: %s\n", yamlQuote(path.Join(o.DeviceDir, KnownHostsFile)))
	b.WriteString("forwards:\n")
	for _, f := range o.Forwards {
		fmt.Fprintf(&b, "  - %s\n", yamlQuote(f))
	}
	if o.OnDemand {
		b.WriteString("# On demand: wait for wake-ups over MQTT instead of holding the SSH connection.\n")
		b.WriteString("on_demand: true\n")
		fmt.Fprintf(&b, "mqtt: %s\n", yamlQuote(o.MQTTURL))
		fmt.Fprintf(&b, "mqtt_ca: %s\n", yamlQuote(path.Join(o.DeviceDir, MQTTCAFile)))
		fmt.Fprintf(&b, "mqtt_cert: %s\n", yamlQuote(path.Join(o.DeviceDir, MQTTCertFile)))
		fmt.Fprintf(&b, "mqtt_key: %s\n", yamlQuote(path.Join(o.DeviceDir, MQTTKeyFile)))
	}
	return []byte(b.String())
}

// mqttServerIdentity is the MQTT identity of the server itself, which the
// broker grants every topic: no device may have it.
const mqttServerIdentity = "switchboard-server"

// mqttCertValidity is how long a device's MQTT certificate lasts; re-enrol
// (--force) to renew it.
const mqttCertValidity = 10 * 365 * 24 * time.Hour
