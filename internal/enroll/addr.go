package enroll

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// ErrNoPublicAddr is returned by PublicAddr when the state dir has no public-addr file.
var ErrNoPublicAddr = errors.New("no public address recorded")

// ErrNoHostKey is returned by ReadHostKey when neither the host key nor its .pub exists.
var ErrNoHostKey = errors.New("no host key")

// ParseServer checks a HOST:PORT server address and returns it with the host in lower case
// (OpenSSH lower-cases host names, and known_hosts must match what the agent dials). An IPv6
// host is written in brackets: [2001:db8::1]:2222.
func ParseServer(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not HOST:PORT", s)
	}
	if host == "" {
		return "", fmt.Errorf("%q has no host", s)
	}
	if strings.ContainsFunc(host, func(r rune) bool {
		return r <= ' ' || r >= utf8.RuneSelf || strings.ContainsRune(`[]/\"'@,*?!#`, r)
	}) {
		return "", fmt.Errorf("%q: host %q is not a host name or address", s, host)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || port[0] == '0' {
		return "", fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	return net.JoinHostPort(strings.ToLower(host), port), nil
}

// PublicAddr returns the address recorded in STATE-DIR/public-addr by a server started with
// --public-addr, or ErrNoPublicAddr if there is none.
func PublicAddr(stateDir string) (string, error) {
	name := filepath.Join(stateDir, PublicAddrFile)
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", ErrNoPublicAddr
	}
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSpace(line)
	if line == "" {
		return "", ErrNoPublicAddr
	}
	s, err := ParseServer(line)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

// ReadHostKey returns the public key of the server's host key file privPath: from
// privPath+".pub" if it exists, else derived from the private key. It returns an error
// wrapping ErrNoHostKey if neither exists.
func ReadHostKey(privPath string) (ssh.PublicKey, error) {
	b, err := os.ReadFile(privPath + ".pub")
	if err == nil {
		key, _, _, _, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, fmt.Errorf("host key %s.pub: %w", privPath, err)
		}
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	b, err = os.ReadFile(privPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNoHostKey, privPath)
	}
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("host key %s: %w", privPath, err)
	}
	return signer.PublicKey(), nil
}

// KnownHostsLine returns the known_hosts line (without a line end) that pins key for server
// (HOST:PORT): "[host]:port ssh-ed25519 AAAA…", or "host ssh-ed25519 AAAA…" for port 22.
func KnownHostsLine(server string, key ssh.PublicKey) string {
	return knownhosts.Line([]string{knownhosts.Normalize(server)}, key)
}

// checkForward checks a forward written [VPORT:]HOST:PORT, such as 22:127.0.0.1:22,
// localhost:80 or 8080:[::1]:80.
func checkForward(s string) error {
	spec := s
	if v, rest, ok := strings.Cut(s, ":"); ok && v != "" && strings.Trim(v, "0123456789") == "" {
		if _, _, err := net.SplitHostPort(rest); err == nil {
			if !validPort(v) {
				return fmt.Errorf("virtual port %q is not a number from 1 to 65535", v)
			}
			spec = rest
		}
	}
	host, port, err := net.SplitHostPort(spec)
	if err != nil {
		return errors.New("want [VPORT:]HOST:PORT, such as 22:127.0.0.1:22")
	}
	if host == "" || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r >= utf8.RuneSelf || r == '"' || r == '\\' }) {
		return fmt.Errorf("host %q is not a host name or address", host)
	}
	if !validPort(port) {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

func validPort(s string) bool {
	n, err := strconv.ParseUint(s, 10, 16)
	return err == nil && n > 0 && s[0] != '0'
}

// yamlQuote returns s as a YAML double-quoted scalar. Go's escapes (\", \\, \n, \xXX, \uXXXX,
// …) are all YAML escapes too; callers pass valid UTF-8, so \xXX never stands for a lone byte.
func yamlQuote(s string) string { return strconv.Quote(s) }

func isControl(r rune) bool { return unicode.IsControl(r) }
