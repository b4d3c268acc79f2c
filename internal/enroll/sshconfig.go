package enroll

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/cpu"

	"github.com/switchboard-dev/switchboard/internal/policy"
)

// DefaultPivotName is the ssh_config Host name SSHConfig gives the server.
const DefaultPivotName = "pivot"

// SSHConfig is an ssh_config block for operators: a Host entry for the server (the pivot), and
// one that sends NAME.Domain through it. Call Validate before Write.
type SSHConfig struct {
	Name       string        // the Host name for the pivot; DefaultPivotName if empty
	Server     string        // the pivot's HOST:PORT
	Identity   string        // IdentityFile for the pivot, or ""
	KnownHosts string        // UserKnownHostsFile pinning the pivot's host key, or ""
	Domain     string        // the server's --domain, or ""
	HostKey    ssh.PublicKey // the pivot's host key, shown in a comment when KnownHosts is ""; may be nil
	// Ciphers, if set, is a Ciphers line for the pivot: PivotCiphers gives one.
	Ciphers string
}

// aesFirst is OpenSSH's default cipher set with AES-GCM moved ahead of ChaCha20. A plain list,
// not "^aes128-gcm@openssh.com,…", which OpenSSH before 8.7 cannot parse.
const aesFirst = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"

// cipherName is what an OpenSSH cipher name looks like; anything else could end the
// Ciphers line and inject options into the block.
var cipherName = regexp.MustCompile(`^[a-z0-9][a-z0-9@.-]*$`)

// PivotCiphers is the Ciphers line for operators' connections to a pivot running on this
// machine: AES-GCM first when the CPU has AES and carry-less multiply instructions. The pivot
// decrypts and re-encrypts every byte of a circuit; Go's AES-GCM uses those instructions, while
// its ChaCha20 has no assembly on amd64 and runs at about a quarter of OpenSSL's speed, and stock
// ssh picks ChaCha20 first. "" (ssh's default) on machines without them.
func PivotCiphers() string {
	if (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL) {
		return aesFirst
	}
	return ""
}

// Validate fills in the defaults and checks the fields; its errors are usage errors. The Host
// name and the domain must be valid switchboard names and are lower-cased: ssh matches Host
// patterns against the name exactly as typed (case-sensitively), and the block and the commands
// it suggests use lower case throughout, as ssh does for the name it then connects to.
func (c *SSHConfig) Validate() error {
	if c.Name == "" {
		c.Name = DefaultPivotName
	}
	n, err := policy.CanonicalName(c.Name)
	if err != nil {
		return fmt.Errorf("--name %q: %w", c.Name, err)
	}
	c.Name = n
	s, err := ParseServer(c.Server)
	if err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	c.Server = s
	if c.Domain != "" {
		d, err := policy.CanonicalName(c.Domain)
		if err != nil {
			return fmt.Errorf("--domain %q: %w", c.Domain, err)
		}
		c.Domain = d
	}
	for _, f := range []struct {
		flag string
		path *string
	}{{"--identity", &c.Identity}, {"--known-hosts", &c.KnownHosts}} {
		if *f.path == "" {
			continue
		}
		if err := configPathProblem(*f.path); err != nil {
			return fmt.Errorf("%s %q: %w", f.flag, *f.path, err)
		}
		if !strings.HasPrefix(*f.path, "~") { // ssh expands a leading ~ itself
			abs, err := filepath.Abs(*f.path)
			if err != nil {
				return fmt.Errorf("%s %q: %w", f.flag, *f.path, err)
			}
			*f.path = abs
		}
	}
	for _, name := range strings.Split(c.Ciphers, ",") {
		if c.Ciphers != "" && !cipherName.MatchString(name) {
			return fmt.Errorf("ciphers: %q is not a cipher name (a comma-separated list such as %s)", name, aesFirst)
		}
	}
	return nil
}

// configPathProblem says why p cannot be written in ssh_config, or returns nil.
func configPathProblem(p string) error {
	switch {
	case !utf8.ValidString(p) || strings.ContainsFunc(p, isControl):
		return errors.New("contains control characters or is not UTF-8")
	case strings.ContainsAny(p, `"'\`):
		return errors.New(`quotes and backslashes cannot be written in ssh_config`)
	case strings.Contains(p, "${"):
		return errors.New(`ssh would read "${" as an environment variable`)
	}
	return nil
}

// configPath writes p as an ssh_config argument: % doubled (ssh expands %-tokens in these
// paths), and quoted if it holds a blank or '#'.
func configPath(p string) string {
	p = strings.ReplaceAll(p, "%", "%%")
	if strings.ContainsAny(p, " \t#") {
		return `"` + p + `"`
	}
	return p
}

// Write writes the block, with comments saying how to install and use it.
func (c SSHConfig) Write(w io.Writer) error {
	host, port, err := net.SplitHostPort(c.Server)
	if err != nil {
		return fmt.Errorf("enroll: server %q: %w", c.Server, err)
	}
	const dev = "dev42"
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# switchboard: ssh client configuration for the pivot at %s", c.Server)
	p("# (printed by `switchboard ssh-config`). Put it near the top of ~/.ssh/config, before any")
	p(`# "Host *" block, since ssh uses the first value it finds for each option; or save it as`)
	p(`# ~/.ssh/switchboard.conf and make "Include switchboard.conf" the first line of ~/.ssh/config.`)
	p("#")
	usage := [][2]string{
		{"ssh " + c.Name + " ls", "the devices your key may reach (ls --json for scripts)"},
		{"ssh -J " + c.Name + " root@" + dev, "a shell on device " + dev + "; scp, sftp and rsync -e 'ssh -J " + c.Name + "' too"},
	}
	if c.Domain != "" {
		usage = append(usage, [2]string{"ssh root@" + dev + "." + c.Domain, "the same, through the Host *." + c.Domain + " block below"})
	}
	width := 0
	for _, u := range usage {
		width = max(width, len(u[0]))
	}
	for _, u := range usage {
		p("#   %-*s   %s", width, u[0], u[1])
	}
	p("#")
	p("# The first time you reach a device, ssh asks you to accept the device's own host key (that")
	p("# of its sshd, not the pivot's) and keeps it in ~/.ssh/known_hosts under the name you typed,")
	p("# in lower case. Check it against `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on")
	p("# the device.")
	if c.KnownHosts == "" && c.HostKey != nil {
		p("#")
		p("# The pivot's host key; add this line to ~/.ssh/known_hosts, or ssh asks you to accept it:")
		p("#   %s", KnownHostsLine(c.Server, c.HostKey))
	}
	p("Host %s", c.Name)
	p("    HostName %s", host)
	p("    Port %s", port)
	if c.Identity != "" {
		p("    IdentityFile %s", configPath(c.Identity))
		p("    IdentitiesOnly yes")
	}
	if c.KnownHosts != "" {
		p("    UserKnownHostsFile %s", configPath(c.KnownHosts))
		p("    StrictHostKeyChecking yes")
	}
	if c.Ciphers != "" {
		p("    # ssh's default ciphers with AES-GCM first: the pivot re-encrypts every byte, and its")
		p("    # AES-GCM is several times faster than its ChaCha20 on this hardware.")
		p("    Ciphers %s", c.Ciphers)
	}
	p("")
	if c.Domain != "" {
		pattern := "*." + c.Domain
		for _, h := range []string{strings.ToLower(host), c.Name} {
			if strings.HasSuffix(h, "."+c.Domain) && !strings.Contains(pattern, " !"+h) {
				pattern += " !" + h // the pivot itself must not jump through itself
			}
		}
		p("# NAME.%s is device NAME, reached through the pivot (which runs with --domain %s).", c.Domain, c.Domain)
		p("# Type names in lower case: ssh matches Host patterns against the name as typed.")
		p("Host %s", pattern)
		p("    ProxyJump %s", c.Name)
	} else {
		p(`# To type "ssh %s" without -J, list your devices' names here (or patterns that match only`, dev)
		p(`# them, such as cam-*) and remove the "#"s. Do not write "Host *" or "Host !%s *": that`, c.Name)
		p("# would send every ssh connection you make, to github.com too, through the pivot.")
		p("#Host %s cam-*", dev)
		p("#    ProxyJump %s", c.Name)
	}
	_, err = io.WriteString(w, b.String())
	return err
}
