package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/switchboard-dev/switchboard/internal/agent"
	"github.com/switchboard-dev/switchboard/internal/enroll"
	"github.com/switchboard-dev/switchboard/internal/hostkey"
)

// execute runs a subcommand built by newCmd with args, as the root command would.
func execute(t *testing.T, newCmd func(stdout, stderr *bytes.Buffer) *cobra.Command, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newCmd(&out, &errOut)
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func enrollCmd(stdout, stderr *bytes.Buffer) *cobra.Command { return enrollCommand(stdout, stderr) }
func sshConfigCmd(stdout, _ *bytes.Buffer) *cobra.Command   { return sshConfigCommand(stdout) }

// serverState returns a state dir with a host key, as the first `switchboard serve` leaves it.
func serverState(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, _, err := hostkey.LoadOrCreate(filepath.Join(dir, enroll.HostKeyFile)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func isUsage(err error) bool {
	var ue usageError
	return errors.As(err, &ue) || (err != nil && isCobraUsage(err))
}

func TestEnrollDevice(t *testing.T) {
	state := serverState(t)
	out := filepath.Join(t.TempDir(), "dev42")
	stdout, stderr, err := execute(t, enrollCmd, "Dev42", "--role", "device", "--out", out, "--state-dir", state,
		"--server", "pivot.example.com:2222", "--forward", "22:127.0.0.1:22", "--forward", "80:127.0.0.1:8080")
	if err != nil || stderr != "" {
		t.Fatalf("enroll: %v, stderr %q", err, stderr)
	}
	for _, want := range []string{
		`Enrolled device "dev42": key SHA256:`,
		"is on line 1 of " + filepath.Join(state, "authorized_keys") + ".\n",
		"scp -r " + out + "/. root@DEVICE:/etc/switchboard/\n",
		"switchboard agent --config /etc/switchboard/agent.yaml\n",
		"systemctl enable --now switchboard-agent\n",
		"ssh -J pivot root@dev42\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	// The agent's own parser reads what enroll wrote.
	cfg, err := agent.LoadConfigFile(filepath.Join(out, enroll.AgentFile))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server != "pivot.example.com:2222" || cfg.Name != "dev42" || cfg.Identity != "/etc/switchboard/id_ed25519" ||
		cfg.KnownHosts != "/etc/switchboard/known_hosts" || len(cfg.Forwards) != 2 ||
		cfg.Forwards[0].String() != "22:127.0.0.1:22" || cfg.Forwards[1].String() != "80:127.0.0.1:8080" {
		t.Errorf("agent config %+v", cfg)
	}

	_, _, err = execute(t, enrollCmd, "dev42", "--role", "device", "--out", t.TempDir(), "--state-dir", state, "--server", "pivot.example.com:2222")
	if err == nil || isUsage(err) || err.Error() != `enroll: device "dev42" is already enrolled (authorized_keys line 1); use --force to rotate its key` {
		t.Errorf("second enroll: %v", err)
	}
}

func TestEnrollRotationWarns(t *testing.T) {
	state := serverState(t)
	ak := filepath.Join(state, "authorized_keys")
	if err := os.WriteFile(ak, []byte("from=\"10.0.0.0/8\",access=\"listen\",hostname=\"dev42\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKhMAvQGQHmhlYSHPA9WD7ubh5ioP16SpgWHG5mpfmlb old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := execute(t, enrollCmd, "dev42", "--role", "device", "--out", t.TempDir(), "--state-dir", state,
		"--server", "pivot.example.com:2222", "--force")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, `Rotated device "dev42"`) || !strings.Contains(stdout, "replacing line 1; the server reloads") {
		t.Errorf("stdout:\n%s", stdout)
	}
	if stderr != "switchboard: warning: authorized_keys line 1 had options that were not carried over to the new key (from=\"10.0.0.0/8\"); add them to line 1 by hand if they still apply\n" {
		t.Errorf("stderr %q", stderr)
	}
}

func TestEnrollOperator(t *testing.T) {
	state := serverState(t)
	if err := os.WriteFile(filepath.Join(state, enroll.PublicAddrFile), []byte("pivot.example.com:2222\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "alice")
	stdout, _, err := execute(t, enrollCmd, "alice", "--role", "operator", "--out", out, "--state-dir", state, "--domain", "example.com")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`Enrolled operator "alice"`,
		"Host pivot\n    HostName pivot.example.com\n    Port 2222\n",
		"    IdentityFile " + filepath.Join(out, "id_ed25519") + "\n",
		"    UserKnownHostsFile " + filepath.Join(out, "known_hosts") + "\n",
		"Host *.example.com !pivot.example.com\n    ProxyJump pivot\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
}

func TestEnrollErrors(t *testing.T) {
	state := serverState(t)
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{[]string{"--role", "device", "--out", "x"}, true, "accepts 1 arg(s)"},
		{[]string{"dev42", "--out", "x"}, true, "--role is needed"},
		{[]string{"dev42", "--role", "robot", "--out", "x"}, true, `--role "robot"`},
		{[]string{"dev 42", "--role", "device", "--out", "x"}, true, `NAME "dev 42"`},
		{[]string{"dev42", "--role", "device"}, true, "--out DIR is needed"},
		{[]string{"dev42", "--role", "operator", "--out", "x", "--forward", "22:localhost:22"}, true, "--forward is for devices"},
		{[]string{"dev42", "--role", "device", "--out", "x", "--domain", "example.com"}, true, "--domain is for operators"},
		{[]string{"dev42", "--role", "device", "--out", "x", "--no-such-flag"}, true, "unknown flag"},
		{[]string{"dev42", "--role", "device", "--out", "x", "--state-dir", state}, false,
			"enroll: --server HOST:PORT is needed (the address devices dial), or start the server once with --public-addr"},
		{[]string{"dev42", "--role", "device", "--out", "x", "--state-dir", "STATE", "--server", "p:22"}, false,
			"start `switchboard serve` once first"},
	} {
		for i, a := range tc.args {
			if a == "STATE" {
				tc.args[i] = t.TempDir()
			}
			if a == "x" {
				tc.args[i] = filepath.Join(t.TempDir(), "x")
			}
		}
		_, _, err := execute(t, enrollCmd, tc.args...)
		if err == nil || isUsage(err) != tc.usage || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("enroll %q: %v (usage %v), want %q (usage %v)", tc.args, err, isUsage(err), tc.want, tc.usage)
		}
	}
}

func TestSSHConfigCommand(t *testing.T) {
	state := serverState(t)
	_, _, err := execute(t, sshConfigCmd, "--state-dir", state)
	if err == nil || isUsage(err) || !strings.Contains(err.Error(), "ssh-config: --server HOST:PORT is needed") {
		t.Errorf("without a server: %v", err)
	}
	if _, _, err := execute(t, sshConfigCmd, "--server", "nope"); !isUsage(err) {
		t.Errorf("--server nope: %v, want a usage error", err)
	}
	if err := os.WriteFile(filepath.Join(state, enroll.PublicAddrFile), []byte("sb.example.net:22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := execute(t, sshConfigCmd, "--state-dir", state, "--name", "sb")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Host sb\n    HostName sb.example.net\n    Port 22\n", "#   sb.example.net ssh-ed25519 AAAA", "ssh -J sb root@dev42"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
}
