package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

// LastSeenFile keeps, in the state dir, when each device was last seen, so
// an operator still reads "offline (last seen …)" after a server restart.
const LastSeenFile = "last-seen.json"

// loadLastSeen reads the file; a missing file is an empty map. Entries with
// an invalid name are dropped, so a hand-edited file cannot smuggle one in.
func loadLastSeen(path string) (map[string]board.Sighting, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]board.Sighting{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	var raw map[string]board.Sighting
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("server: %s: %w", path, err)
	}
	seen := make(map[string]board.Sighting, len(raw))
	for n, s := range raw {
		name, err1 := policy.CanonicalName(n)
		dev, err2 := policy.CanonicalName(s.Device)
		if err1 == nil && err2 == nil && !s.At.IsZero() {
			seen[name] = board.Sighting{At: s.At, Device: dev}
		}
	}
	return seen, nil
}

// saveLastSeen writes the map atomically: a crash leaves the old file or
// the new one, never half of one.
func saveLastSeen(path string, seen map[string]board.Sighting) error {
	b, err := json.MarshalIndent(seen, "", " ")
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".last-seen-*")
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("server: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("server: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}
