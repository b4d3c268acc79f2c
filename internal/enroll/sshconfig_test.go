package enroll

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSSHConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		c       SSHConfig
		wantErr string
	}{
		{SSHConfig{Server: "pivot.example.com:2222"}, ""},
		{SSHConfig{}, "--server"},
		{SSHConfig{Server: "p:22", Name: "piv*"}, `--name "piv*"`},
		{SSHConfig{Server: "p:22", Domain: "bad domain"}, `--domain "bad domain"`},
		{SSHConfig{Server: "p:22", Identity: `/a"b`}, "--identity"},
		{SSHConfig{Server: "p:22", KnownHosts: "/a/${HOME}/b"}, "--known-hosts"},
		{SSHConfig{Server: "p:22", KnownHosts: "/a\nb"}, "control characters"},
		{SSHConfig{Server: "p:22", Ciphers: aesFirst}, ""},
		{SSHConfig{Server: "p:22", Ciphers: "aes128-gcm@openssh.com\n    ProxyCommand sh"}, "not a cipher name"},
		{SSHConfig{Server: "p:22", Ciphers: "aes128-ctr,,aes256-ctr"}, "not a cipher name"},
		{SSHConfig{Server: "p:22", Ciphers: "^aes128-ctr"}, "not a cipher name"},
	} {
		err := tc.c.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.c, err, tc.wantErr)
		}
	}
}

func TestSSHConfigWrite(t *testing.T) {
	_, hostKey := newState(t)
	c := SSHConfig{Name: "Pivot", Server: "Pivot.Example.com:2222", Domain: "Example.com",
		Identity: "/home/a b/id_ed25519", KnownHosts: "~/sb/known_hosts%1"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := c.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\nHost pivot\n    HostName pivot.example.com\n    Port 2222\n",
		"\n    IdentityFile \"/home/a b/id_ed25519\"\n    IdentitiesOnly yes\n",
		"\n    UserKnownHostsFile ~/sb/known_hosts%%1\n    StrictHostKeyChecking yes\n",
		"\nHost *.example.com !pivot.example.com\n    ProxyJump pivot\n",
		"ssh -J pivot root@dev42",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("block lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "ssh-ed25519") {
		t.Error("a host key comment was printed although KnownHosts is set")
	}

	c = SSHConfig{Server: "192.0.2.1:22", HostKey: hostKey}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := c.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\n#   192.0.2.1 ssh-ed25519 AAAA", "\n#Host dev42 cam-*\n#    ProxyJump pivot\n", "Host !pivot *"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("block lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "IdentityFile") || strings.Contains(b.String(), "\nHost *") {
		t.Errorf("unexpected lines:\n%s", b.String())
	}
}

// TestSSHConfigWithOpenSSH has the real ssh read the block (ssh -G) and checks what it makes
// of the pivot, of devices under the domain, of the pivot's own name under the domain, and
// of an unrelated host.
func TestSSHConfigWithOpenSSH(t *testing.T) {
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ssh not found")
		}
		t.Skip("ssh not found")
	}
	dir := t.TempDir()
	c := SSHConfig{Server: "pivot.example.com:2222", Domain: "example.com",
		Identity: filepath.Join(dir, "my keys", "id_ed25519"), KnownHosts: filepath.Join(dir, "known_hosts")}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := c.Write(&b); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config")
	writeFile(t, cfg, b.String())
	resolve := func(host string) map[string]string { return resolve2(t, sshBin, cfg, host) }
	p := resolve("pivot")
	if p["hostname"] != "pivot.example.com" || p["port"] != "2222" || p["identitiesonly"] != "yes" ||
		p["stricthostkeychecking"] != "true" || p["proxyjump"] != "" {
		t.Errorf("ssh -G pivot: %v", p)
	}
	if !strings.HasPrefix(p["identityfile"], filepath.Join(dir, "my keys", "id_ed25519")) ||
		!strings.HasPrefix(p["userknownhostsfile"], filepath.Join(dir, "known_hosts")) {
		t.Errorf("ssh -G pivot: identityfile %q, userknownhostsfile %q", p["identityfile"], p["userknownhostsfile"])
	}
	d := resolve("dev42.example.com")
	if d["hostname"] != "dev42.example.com" || d["proxyjump"] != "pivot" || d["port"] != "22" || d["identitiesonly"] == "yes" {
		t.Errorf("ssh -G dev42.example.com: hostname %q, proxyjump %q, port %q", d["hostname"], d["proxyjump"], d["port"])
	}
	// ProxyJump hands the device's name to the pivot in lower case, however it was typed.
	if j := resolve2(t, sshBin, cfg, "-J", "pivot", "DEV42"); j["hostname"] != "dev42" || j["proxyjump"] != "pivot" {
		t.Errorf("ssh -G -J pivot DEV42: hostname %q, proxyjump %q", j["hostname"], j["proxyjump"])
	}
	if self := resolve("pivot.example.com"); self["proxyjump"] != "" {
		t.Errorf("the pivot's own name jumps through the pivot: %q", self["proxyjump"])
	}
	if other := resolve("github.com"); other["proxyjump"] != "" {
		t.Errorf("github.com jumps through the pivot: %q", other["proxyjump"])
	}
}

// resolve2 returns the options `ssh -F cfg -G args...` resolves, the first value of each.
func resolve2(tb testing.TB, sshBin, cfg string, args ...string) map[string]string {
	tb.Helper()
	out, err := exec.Command(sshBin, append([]string{"-F", cfg, "-G"}, args...)...).Output()
	if err != nil {
		tb.Fatalf("ssh -G %s: %v\n%s", args, err, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, " ")
		if _, seen := m[k]; !seen {
			m[k] = v
		}
	}
	return m
}

// The Ciphers line reaches the pivot's Host block only, and stock ssh reads it with AES-GCM first.
func TestSSHConfigCiphers(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ssh is not installed")
		}
		t.Skip("ssh is not installed")
	}
	c := SSHConfig{Server: "192.0.2.1:22", Domain: "example.com", Ciphers: aesFirst}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := c.Write(&b); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{
		"pivot":             "ciphers " + aesFirst,
		"dev42.example.com": "ciphers chacha20-poly1305@openssh.com,", // ssh's default for the inner session
	} {
		out, err := exec.Command("ssh", "-G", "-F", path, host).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -G %s: %v\n%s", host, err, out)
		}
		if !strings.Contains(string(out), "\n"+want) {
			t.Errorf("ssh -G %s: no line starting %q in:\n%s", host, want, out)
		}
	}
}
