package enroll

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/policy"
)

// options returns validated options enrolling name in role from state into a new out dir.
func options(tb testing.TB, state, name string, role Role) Options {
	tb.Helper()
	o := Options{Name: name, Role: role, Out: filepath.Join(tb.TempDir(), "out"), StateDir: state,
		Server: "pivot.example.com:2222"}
	if err := o.Validate(); err != nil {
		tb.Fatal(err)
	}
	return o
}

// entryFor returns the parsed authorized_keys entry whose key is the one in dir, and its line.
func entryFor(tb testing.TB, akPath, dir string) *policy.Entry {
	tb.Helper()
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(readFile(tb, filepath.Join(dir, PubFile))))
	if err != nil {
		tb.Fatal(err)
	}
	p, errs := policy.Parse([]byte(readFile(tb, akPath)))
	for _, e := range p.Entries() {
		if string(e.Key.Marshal()) == string(key.Marshal()) {
			return e
		}
	}
	tb.Fatalf("the key in %s is not in %s (errors %v)", dir, akPath, errs)
	return nil
}

func mode(tb testing.TB, path string) fs.FileMode {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestRunDevice(t *testing.T) {
	state, hostKey := newState(t)
	o := options(t, state, "Dev42", Device)
	o.Forwards = []string{"22:127.0.0.1:22", "8080:localhost:80"}
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ak := filepath.Join(state, "authorized_keys")
	if res.Name != "dev42" || res.Line != 1 || res.AuthorizedKeys != ak || len(res.Replaced) != 0 || len(res.Warnings) != 0 {
		t.Errorf("result %+v", res)
	}
	e := entryFor(t, ak, o.Out)
	if e.Hostname != "dev42" || e.Roles != policy.Listen || e.Comment != "switchboard-device:dev42" || e.Line != 1 {
		t.Errorf("entry %+v", e)
	}
	if e.Fingerprint != res.Fingerprint {
		t.Errorf("fingerprint %s, result says %s", e.Fingerprint, res.Fingerprint)
	}
	if m := mode(t, ak); m != 0o600 {
		t.Errorf("new authorized_keys has mode %v", m)
	}
	if m := mode(t, o.Out); m != 0o700 {
		t.Errorf("out dir has mode %v", m)
	}
	if m := mode(t, filepath.Join(o.Out, KeyFile)); m != 0o600 {
		t.Errorf("private key has mode %v", m)
	}
	signer, err := ssh.ParsePrivateKey([]byte(readFile(t, filepath.Join(o.Out, KeyFile))))
	if err != nil || string(signer.PublicKey().Marshal()) != string(e.Key.Marshal()) {
		t.Errorf("private key does not parse or match: %v", err)
	}
	wantKH := "[pivot.example.com]:2222 " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey))) + "\n"
	if got := readFile(t, filepath.Join(o.Out, KnownHostsFile)); got != wantKH {
		t.Errorf("known_hosts %q, want %q", got, wantKH)
	}
	wantAgent := `# switchboard agent configuration for dev42 (written by switchboard enroll)
server: "pivot.example.com:2222"
name: "dev42"
identity: "/etc/switchboard/id_ed25519"
known_hosts: "/etc/switchboard/known_hosts"
forwards:
  - "22:127.0.0.1:22"
  - "8080:localhost:80"
`
	if got := readFile(t, filepath.Join(o.Out, AgentFile)); got != wantAgent {
		t.Errorf("agent.yaml\n%s\nwant\n%s", got, wantAgent)
	}
	if len(res.Files) != 4 || res.AgentConfig != "/etc/switchboard/agent.yaml" {
		t.Errorf("files %v, agent config %q", res.Files, res.AgentConfig)
	}
}

func TestRunOperator(t *testing.T) {
	state, _ := newState(t)
	ak := filepath.Join(state, "authorized_keys")
	before := expand(t, "# operators\naccess=\"initiate\" $K1 bob\n")
	if err := os.WriteFile(ak, []byte(before), 0o640); err != nil {
		t.Fatal(err)
	}
	o := options(t, state, "alice", Operator)
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	e := entryFor(t, ak, o.Out)
	if e.Hostname != "" || e.Roles != policy.Initiate || e.Comment != "switchboard-operator:alice" || e.Line != 3 || res.Line != 3 {
		t.Errorf("entry %+v, result line %d", e, res.Line)
	}
	if got := readFile(t, ak); !strings.HasPrefix(got, before) {
		t.Errorf("the old lines changed:\n%s", got)
	}
	if m := mode(t, ak); m != 0o640 {
		t.Errorf("authorized_keys mode %v, want the old 0640", m)
	}
	if _, err := os.Stat(filepath.Join(o.Out, AgentFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an operator got agent.yaml (%v)", err)
	}
	if len(res.Files) != 3 {
		t.Errorf("files %v", res.Files)
	}
}

func TestRunRefusesAnExistingName(t *testing.T) {
	state, _ := newState(t)
	ak := filepath.Join(state, "authorized_keys")
	before := expand(t, "# x\n\naccess=\"listen\",hostname=\"dev42\" $K1\n")
	writeFile(t, ak, before)
	o := options(t, state, "dev42", Device)
	_, err := Run(context.Background(), o)
	var ee *ExistsError
	if !errors.As(err, &ee) || err.Error() != `enroll: device "dev42" is already enrolled (authorized_keys line 3); use --force to rotate its key` {
		t.Fatalf("error %v", err)
	}
	if got := readFile(t, ak); got != before {
		t.Errorf("authorized_keys changed to %q", got)
	}
	if _, err := os.Stat(o.Out); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("out dir was created (%v)", err)
	}
}

func TestRunForceRotates(t *testing.T) {
	state, _ := newState(t)
	ak := filepath.Join(state, "authorized_keys")
	o := options(t, state, "dev42", Device)
	first, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	oldKey := readFile(t, filepath.Join(o.Out, PubFile))
	// Lines around the enrolment, in every shape the file may hold.
	head := expand(t, "# comment\r\n\naccess=\"listen\",hostname=\"dev1\" $K1 switchboard-device:dev1\nnot a key line\n")
	tail := expand(t, "  # indented comment\naccess=\"initiate\" $K2 switchboard-operator:alice\r\n")
	writeFile(t, ak, head+readFile(t, ak)+tail)

	if _, err := Run(context.Background(), o); err == nil {
		t.Fatal("a second enroll without --force succeeded")
	}
	o.Force = true
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	got := readFile(t, ak)
	if !strings.HasPrefix(got, head+tail) || strings.Count(got, "\n") != strings.Count(head+tail, "\n")+1 {
		t.Errorf("the other lines were not kept byte for byte:\n%q", got)
	}
	if strings.Contains(got, strings.Fields(oldKey)[1]) {
		t.Error("the old key is still in authorized_keys")
	}
	e := entryFor(t, ak, o.Out)
	if e.Hostname != "dev42" || e.Roles != policy.Listen || e.Line != 7 || res.Line != 7 {
		t.Errorf("new entry %+v, result line %d", e, res.Line)
	}
	if !equalInts(res.Replaced, []int{5}) || res.Fingerprint == first.Fingerprint {
		t.Errorf("replaced %v, fingerprint %s (first %s)", res.Replaced, res.Fingerprint, first.Fingerprint)
	}
	if readFile(t, filepath.Join(o.Out, PubFile)) == oldKey {
		t.Error("the key pair in the out dir was not replaced")
	}
}

func TestRunRefusesToOverwriteTheOutDir(t *testing.T) {
	state, _ := newState(t)
	o := options(t, state, "dev42", Device)
	if err := os.MkdirAll(o.Out, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(o.Out, KeyFile), "precious")
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "already exists; use --force") {
		t.Fatalf("error %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "authorized_keys")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("authorized_keys was written (%v)", err)
	}
	if readFile(t, filepath.Join(o.Out, KeyFile)) != "precious" {
		t.Error("the existing key was overwritten")
	}
}

func TestRunConcurrentEnrolls(t *testing.T) {
	state, _ := newState(t)
	ak := filepath.Join(state, "authorized_keys")
	writeFile(t, ak, "# header\n")
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		role := Device
		if i%3 == 0 {
			role = Operator
		}
		o := options(t, state, fmt.Sprintf("n%d", i), role)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := Run(ctx, o)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	data := readFile(t, ak)
	p, bad := policy.Parse([]byte(data))
	if p.Len() != n || len(bad) != 0 || !strings.HasPrefix(data, "# header\n") {
		t.Fatalf("%d entries, errors %v, want %d:\n%s", p.Len(), bad, n, data)
	}
	for i := range n {
		if !strings.Contains(data, fmt.Sprintf(":n%d\n", i)) {
			t.Errorf("n%d was lost", i)
		}
	}
}

func TestRunKnownHosts(t *testing.T) {
	state, hostKey := newState(t)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey)))
	for _, tc := range []struct{ server, want string }{
		{"pivot.example.com:22", "pivot.example.com " + key},
		{"Pivot.Example.COM:2222", "[pivot.example.com]:2222 " + key},
		{"[2001:db8::1]:22", "2001:db8::1 " + key},
		{"[2001:db8::1]:2222", "[2001:db8::1]:2222 " + key},
		{"192.0.2.7:443", "[192.0.2.7]:443 " + key},
	} {
		o := Options{Name: "dev42", Role: Operator, Out: t.TempDir(), StateDir: state, Server: tc.server, Force: true}
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := Run(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(o.Out, KnownHostsFile)); got != tc.want+"\n" {
			t.Errorf("%s: known_hosts %q, want %q", tc.server, got, tc.want)
		}
	}
}

func TestRunServerFromPublicAddr(t *testing.T) {
	state, _ := newState(t)
	o := options(t, state, "dev42", Device)
	o.Server = ""
	_, err := Run(context.Background(), o)
	want := "enroll: --server HOST:PORT is needed (the address devices dial), or start the server once with --public-addr"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	writeFile(t, filepath.Join(state, PublicAddrFile), "sb.example.net:2200\n")
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Server != "sb.example.net:2200" || !strings.Contains(readFile(t, filepath.Join(o.Out, AgentFile)), `server: "sb.example.net:2200"`) {
		t.Errorf("server %q", res.Server)
	}
	writeFile(t, filepath.Join(state, PublicAddrFile), "no port\n")
	if _, err := Run(context.Background(), options(t, state, "dev43", Device)); err != nil {
		t.Fatalf("--server did not override public-addr: %v", err)
	}
	o = options(t, state, "dev44", Device)
	o.Server = ""
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), PublicAddrFile) {
		t.Fatalf("a bad public-addr gave %v", err)
	}
}

func TestRunWithoutHostKey(t *testing.T) {
	state := t.TempDir()
	o := options(t, state, "dev42", Device)
	_, err := Run(context.Background(), o)
	want := fmt.Sprintf("enroll: no host key in %s; start `switchboard serve` once first", state)
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	// Only the private key (an operator-supplied --host-key): its public half is derived.
	state2, hostKey := newState(t)
	if err := os.Remove(filepath.Join(state2, HostKeyFile+".pub")); err != nil {
		t.Fatal(err)
	}
	o = options(t, state2, "dev42", Device)
	if _, err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(readFile(t, filepath.Join(o.Out, KnownHostsFile)), strings.Fields(string(ssh.MarshalAuthorizedKey(hostKey)))[1]) {
		t.Error("known_hosts does not hold the derived host key")
	}
}

func TestRunLockTimeout(t *testing.T) {
	state, _ := newState(t)
	ak := filepath.Join(state, "authorized_keys")
	dirInfo, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := lock(context.Background(), ak+".lock", dirInfo)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = Run(ctx, options(t, state, "dev42", Device))
	if err == nil || !strings.Contains(err.Error(), "held by another enroll") {
		t.Fatalf("error %v", err)
	}
}

func TestRunFollowsSymlink(t *testing.T) {
	state, _ := newState(t)
	real := filepath.Join(t.TempDir(), "keys")
	writeFile(t, real, "# real\n")
	link := filepath.Join(state, "authorized_keys")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), options(t, state, "dev42", Device))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced (%v)", err)
	}
	if res.AuthorizedKeys != real || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "SIGHUP") {
		t.Errorf("edited %s, warnings %q", res.AuthorizedKeys, res.Warnings)
	}
	if got := readFile(t, real); !strings.HasPrefix(got, "# real\naccess=") {
		t.Errorf("target %q", got)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		o       Options
		wantErr string
	}{
		{Options{Name: "dev 42", Role: Device, Out: "o", StateDir: "s"}, `NAME "dev 42": policy: invalid name "dev 42": ' ' is not allowed`},
		{Options{Name: "dev42", Out: "o", StateDir: "s"}, "--role is needed"},
		{Options{Name: "dev42", Role: "admin", Out: "o", StateDir: "s"}, `--role "admin"`},
		{Options{Name: "dev42", Role: Device, StateDir: "s"}, "--out DIR is needed"},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Server: "pivot"}, `--server: "pivot" is not HOST:PORT`},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Server: "pivot:0"}, "port"},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Server: ":2222"}, "no host"},
		{Options{Name: "dev42", Role: Operator, Out: "o", StateDir: "s", Forwards: []string{"22"}}, "--forward is for devices"},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Forwards: []string{"22"}}, `--forward "22"`},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Forwards: []string{"99999:localhost:22"}}, "virtual port"},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Forwards: []string{"22:127.0.0.1:0"}}, "port"},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", DeviceDir: "etc/sb"}, "--device-dir"},
		{Options{Name: "dev42", Role: Device, Out: "o", StateDir: "s", Forwards: []string{"localhost:80", "8080:[::1]:80", "22:127.0.0.1:22"}}, ""},
	} {
		err := tc.o.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.o, err, tc.wantErr)
		}
	}
}
