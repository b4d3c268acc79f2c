package enroll

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/switchboard-dev/switchboard/internal/policy"
)

// edit is what rewrite did to an authorized_keys file.
type edit struct {
	line     int      // the new line's number
	removed  []int    // old line numbers of the lines removed
	warnings []string // one sentence each
}

// rewrite returns data with newLine appended, after removing the lines that already enrol
// name in role (only when force is set; otherwise their presence is an *ExistsError). Every
// other line is kept byte for byte. The new line ends as the file's last line does (so a CRLF
// file stays CRLF), and a last line without a line end first gets one.
//
// The lines that enrol a device NAME are those with hostname="NAME" and those whose comment is
// switchboard-device:NAME; for an operator, those whose comment is switchboard-operator:NAME.
// A removed line's options are not carried over: a warning names any beyond the ones enroll
// writes. A line of another key that has alias="NAME" is an error even with force, since
// removing it would take a name away from another device.
func rewrite(data []byte, role Role, name, newLine string, force bool) ([]byte, edit, error) {
	p, _ := policy.Parse(data) // bad lines are kept as they are; the server reports them
	var remove []*policy.Entry
	for _, e := range p.Entries() {
		mine := commentNames(e.Comment, marker(role), name)
		if role == Device {
			mine = mine || e.Hostname == name
			if !mine && slices.Contains(e.Aliases, name) {
				return nil, edit{}, fmt.Errorf(
					"enroll: %q is an alias of another key (authorized_keys line %d); remove that alias first", name, e.Line)
			}
		}
		if mine {
			remove = append(remove, e)
		}
	}
	if len(remove) > 0 && !force {
		return nil, edit{}, &ExistsError{Role: role, Name: name, Line: remove[0].Line}
	}

	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1] // data ended with a line end, or was empty
	}
	eol := "\n"
	for i := len(lines) - 1; i >= 0; i-- {
		if bytes.HasSuffix(lines[i], []byte("\r\n")) {
			eol = "\r\n"
			break
		} else if bytes.HasSuffix(lines[i], []byte("\n")) {
			break
		}
	}

	var ed edit
	type dropped struct {
		line  int
		extra string
	}
	var lost []dropped
	var out bytes.Buffer
	out.Grow(len(data) + len(newLine) + 2)
	n := 0
	for i, l := range lines {
		if j := slices.IndexFunc(remove, func(e *policy.Entry) bool { return e.Line == i+1 }); j >= 0 {
			ed.removed = append(ed.removed, i+1)
			if extra := extraOptions(string(l), role, name); extra != "" {
				lost = append(lost, dropped{i + 1, extra})
			}
			continue
		}
		out.Write(l)
		if !bytes.HasSuffix(l, []byte("\n")) {
			out.WriteString(eol)
		}
		n++
	}
	out.WriteString(newLine + eol)
	ed.line = n + 1
	for _, d := range lost {
		ed.warnings = append(ed.warnings, fmt.Sprintf(
			"authorized_keys line %d had options that were not carried over to the new key (%s); add them to line %d by hand if they still apply",
			d.line, d.extra, ed.line))
	}
	return out.Bytes(), ed, nil
}

// commentNames reports whether comment is prefix+name, the name compared without case.
func commentNames(comment, prefix, name string) bool {
	n, ok := strings.CutPrefix(comment, prefix)
	return ok && strings.EqualFold(n, name)
}

// extraOptions returns the options of an authorized_keys line beyond those enroll writes for
// name in role, comma-separated as written, or "".
func extraOptions(line string, role Role, name string) string {
	line = strings.TrimLeft(strings.TrimRight(line, "\r\n"), " \t")
	opts := leadingOptions(line)
	want := []string{operatorOptions}
	if role == Device {
		want = splitOptions(deviceOptions(name))
	}
	var extra []string
	for _, o := range splitOptions(opts) {
		if !slices.ContainsFunc(want, func(w string) bool { return strings.EqualFold(w, o) }) {
			extra = append(extra, o)
		}
	}
	s := strings.Join(extra, ",")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// leadingOptions returns the options field of an authorized_keys line (without leading
// blanks), or "" when the line starts with its key type.
func leadingOptions(line string) string {
	if strings.HasPrefix(line, "ssh-") || strings.HasPrefix(line, "ecdsa-") || strings.HasPrefix(line, "sk-") {
		return ""
	}
	quoted := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\\' && i+1 < len(line) && line[i+1] == '"':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && (c == ' ' || c == '\t'):
			return line[:i]
		}
	}
	return line
}

// splitOptions splits an options field at the commas outside double quotes.
func splitOptions(opts string) []string {
	var out []string
	quoted, start := false, 0
	for i := 0; i < len(opts); i++ {
		switch c := opts[i]; {
		case c == '\\' && i+1 < len(opts) && opts[i+1] == '"':
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = append(out, opts[start:i])
			start = i + 1
		}
	}
	if start < len(opts) {
		out = append(out, opts[start:])
	}
	return out
}

// editAuthorizedKeys replaces the authorized_keys file at path with change(its content), under
// an exclusive flock on path+".lock" that every enroll takes. A missing file reads as empty. The
// new content is written to a temporary file in the same directory, with the old file's mode
// (0600 for a new file) and owner, synced, and renamed over the old one, so the server, which
// watches the directory, reads either the old file or the new one, never a mixture.
//
// A symbolic link is followed and its target edited; a warning then says the server must be
// told with SIGHUP. It returns the path edited and any warnings.
func editAuthorizedKeys(ctx context.Context, path string, change func([]byte) ([]byte, error)) (string, []string, error) {
	var warnings []string
	path, err := filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("enroll: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			return "", nil, fmt.Errorf("enroll: %w", err)
		}
		warnings = append(warnings, fmt.Sprintf(
			"%s is a symbolic link, so the server does not see the change to %s by itself; send it SIGHUP (systemctl reload switchboard-server)",
			path, target))
		path = target
	}
	dir := filepath.Dir(path)
	dirInfo, err := os.Stat(dir)
	if err != nil {
		return "", nil, fmt.Errorf("enroll: authorized_keys directory: %w", err)
	}

	unlock, err := lock(ctx, path+".lock", dirInfo)
	if err != nil {
		return "", nil, err
	}
	defer unlock()

	data, err := os.ReadFile(path)
	mode, owner, exists := fs.FileMode(0o600), dirInfo, err == nil
	switch {
	case exists:
		fi, err := os.Stat(path)
		if err != nil {
			return "", nil, fmt.Errorf("enroll: %w", err)
		}
		mode, owner = fi.Mode().Perm(), fi
	case errors.Is(err, fs.ErrNotExist):
		data = nil
	default:
		return "", nil, fmt.Errorf("enroll: %w", err)
	}
	out, err := change(data)
	if err != nil {
		return "", nil, err
	}
	if err := replaceFile(path, out, mode, owner, exists); err != nil {
		return "", nil, err
	}
	return path, warnings, nil
}

// replaceFile atomically replaces (or creates) path with data and mode. With keepOwner, the new
// file gets owner's uid and gid, and failing to is an error (the server may run as another
// user and must still read the file); without, it gets them only when running as root, which
// gives a new file in the state dir the owner of the state dir.
func replaceFile(path string, data []byte, mode fs.FileMode, owner fs.FileInfo, keepOwner bool) error {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return fail(fmt.Errorf("enroll: %w", err))
	}
	if owner != nil && (keepOwner || os.Geteuid() == 0) {
		if err := chownLike(f, owner); err != nil {
			return fail(fmt.Errorf("enroll: cannot give the new %s the owner of the old one (%w); run enroll as root or as that user", path, err))
		}
	}
	if _, err := f.Write(data); err != nil {
		return fail(fmt.Errorf("enroll: write %s: %w", tmp, err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("enroll: write %s: %w", tmp, err))
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("enroll: write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("enroll: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; some file systems cannot, which is no reason to fail
		d.Close()
	}
	return nil
}

// lockPoll bounds how long lock sleeps between attempts.
const lockPoll = 50 * time.Millisecond

// lock takes an exclusive flock on name (created with mode 0600 if missing; as root, owned
// like dir), waiting until ctx is done, and returns the function that releases it.
func lock(ctx context.Context, name string, dir fs.FileInfo) (unlock func(), err error) {
	_, statErr := os.Lstat(name)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("enroll: lock: %w", err)
	}
	if statErr != nil && os.Geteuid() == 0 {
		chownLike(f, dir) // only so that the server's user may run enroll too; not needed here
	}
	wait := time.Millisecond
	for {
		ok, err := tryLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("enroll: lock %s: %w", name, err)
		}
		if ok {
			return func() { f.Close() }, nil // closing the file releases the lock
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("enroll: gave up waiting for %s, held by another enroll (%w)", name, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, lockPoll)
	}
}

// writeOut writes contents[name] for each of names into dir (created with mode 0700), the
// private key with mode 0600 and the rest 0644. Without replace an existing file is an error;
// with it, files are replaced atomically. It returns the paths written and, of those, the
// ones it created (which a caller may remove if a later step fails).
func writeOut(dir string, names []string, contents map[string][]byte, replace bool) (written, created []string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("enroll: %w", err)
	}
	for _, n := range names {
		p := filepath.Join(dir, n)
		mode := fs.FileMode(0o644)
		if n == KeyFile || n == MQTTKeyFile { // private keys
			mode = 0o600
		}
		_, statErr := os.Lstat(p)
		existed := statErr == nil
		if existed && !replace {
			return written, created, fmt.Errorf("enroll: %s already exists; use --force to replace it", p)
		}
		if existed {
			err = replaceFile(p, contents[n], mode, nil, false)
		} else {
			err = createFile(p, contents[n], mode)
		}
		if err != nil {
			return written, created, err
		}
		written = append(written, p)
		if !existed {
			created = append(created, p)
		}
	}
	return written, created, nil
}

// createFile creates path, which must not exist, with exactly mode and data.
func createFile(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode&0o600)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := f.Chmod(mode); err != nil { // the umask may have taken bits away
		f.Close()
		os.Remove(path)
		return fmt.Errorf("enroll: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("enroll: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("enroll: write %s: %w", path, err)
	}
	return nil
}
