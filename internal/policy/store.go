package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce lets an editor finish a save (often several events: write, rename, chmod) before
// the file is read once.
const debounce = 100 * time.Millisecond

// Store holds the current Policy of one authorized_keys file and swaps it atomically on
// reload, so readers never wait and never see a half-parsed file.
type Store struct {
	path   string
	logger *slog.Logger
	cur    atomic.Pointer[Policy]

	// mu serialises loads, so an older read can never replace a newer one.
	mu     sync.Mutex
	loaded bool        // a load has happened (guarded by mu)
	stamp  os.FileInfo // the file the current policy was read from; nil if missing (guarded by mu)

	// watching, if set (by tests), is called once Watch is receiving events.
	watching func()
}

// NewStore returns a Store for the authorized_keys file at path, holding an empty policy (deny
// all) until Load is called. A nil logger discards.
func NewStore(path string, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{path: path, logger: logger}
	s.cur.Store(&Policy{})
	return s
}

// Policy returns the current policy; never nil.
func (s *Store) Policy() *Policy { return s.cur.Load() }

// Load reads and parses the file now, makes the result current and returns it. A missing file
// is an empty policy (deny all) and a logged warning. An unreadable file keeps the previous
// policy and returns the error, which is not logged. Bad lines are logged and skipped.
func (s *Store) Load() (*Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	data, info, err := readFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		s.logger.Warn("authorized_keys missing: every key is refused", "path", s.path)
		data, info = nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}

	p, errs := Parse(data)
	for _, err := range errs {
		var le *LineError
		if errors.As(err, &le) {
			s.logger.Warn("authorized_keys: bad line", "path", s.path, "line", le.Line, "error", le.Err.Error())
		}
	}
	for _, e := range p.entries {
		if e.CertAuthority {
			s.logger.Warn("authorized_keys: cert-authority is not supported yet; the line admits no key",
				"path", s.path, "line", e.Line, "fingerprint", e.Fingerprint)
		}
		if len(e.Ignored) > 0 {
			s.logger.Info("authorized_keys: option ignored", "path", s.path, "line", e.Line,
				"option", strings.Join(e.Ignored, ","))
		}
	}
	s.logger.Info("authorized_keys loaded", "path", s.path, "entries", p.Len(), "bad_lines", len(errs))

	s.cur.Store(p)
	s.loaded, s.stamp = true, info
	return p, nil
}

// readFile returns the file's content and what it was read from, so a later stat can tell
// whether the file has changed since.
func readFile(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, err
	}
	return data, info, nil
}

// changed reports whether the file differs from the one the current policy was read from.
func (s *Store) changed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded {
		return true
	}
	info, err := os.Stat(s.path)
	if err != nil || s.stamp == nil {
		return (err == nil) != (s.stamp != nil)
	}
	return !os.SameFile(info, s.stamp) || !info.ModTime().Equal(s.stamp.ModTime()) || info.Size() != s.stamp.Size()
}

// Watch reloads the file whenever it changes, until ctx is done, and then returns nil once its
// goroutines have finished. It watches the parent directory, so editors' rename-and-replace
// and mv are seen; a change to a symlink's target elsewhere is not (reload on SIGHUP for that).
// onReload, if not nil, is called with each new policy after a successful load, on Watch's
// goroutine. A failed reload is logged and keeps the previous policy. Watch returns an error
// only if the directory cannot be watched. Call Load first: Watch loads at its start only if
// the file has changed since.
func (s *Store) Watch(ctx context.Context, onReload func(*Policy)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watching %s: %w", s.path, err)
	}
	defer w.Close() // waits for fsnotify's reader goroutine
	dir, base := filepath.Dir(s.path), filepath.Base(s.path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("policy: watching %s: %w", dir, err)
	}
	if s.watching != nil {
		s.watching()
	}

	timer := time.NewTimer(debounce)
	defer timer.Stop()
	if !s.changed() {
		// The caller's Load is current; a change between it and w.Add is caught by changed.
		timer.Stop()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Base(ev.Name) == base {
				timer.Reset(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Usually a queue overflow: events may be lost, so reload to be sure.
			s.logger.Warn("authorized_keys: watch error", "path", s.path, "error", err.Error())
			timer.Reset(debounce)
		case <-timer.C:
			p, err := s.Load()
			if err != nil {
				s.logger.Error("authorized_keys: reload failed, keeping the previous policy",
					"path", s.path, "error", err.Error())
				continue
			}
			if onReload != nil {
				onReload(p)
			}
		}
	}
}
