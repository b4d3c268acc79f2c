// Package hostkey loads the server's SSH host keys, creating the default
// ed25519 key on first start so that a new server needs no set-up step.
package hostkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
)

// Load reads an OpenSSH private key file.
func Load(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hostkey: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("hostkey: %s: %w", path, err)
	}
	return s, nil
}

// LoadOrCreate reads the key at path, or creates an ed25519 key there (mode
// 0600, with path+".pub" beside it) if no file exists. An existing key is
// never overwritten: changing it would break every device's pinning.
func LoadOrCreate(path string) (signer ssh.Signer, created bool, err error) {
	s, err := Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return s, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("hostkey: generate: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "switchboard host key")
	if err != nil {
		return nil, false, fmt.Errorf("hostkey: marshal: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("hostkey: %w", err)
	}
	if err := writeNew(path, pem.EncodeToMemory(block)); errors.Is(err, fs.ErrExist) {
		// Another process created the key meanwhile: use theirs.
		s, err := Load(path)
		return s, false, err
	} else if err != nil {
		return nil, false, err
	}
	signer, err = ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("hostkey: %w", err)
	}
	pub := ssh.MarshalAuthorizedKey(signer.PublicKey())
	if err := os.WriteFile(path+".pub", pub, 0o644); err != nil {
		return nil, false, fmt.Errorf("hostkey: %w", err)
	}
	return signer, true, nil
}

// writeNew creates path with data, mode 0600, all or nothing: the data is
// written and synced under a temporary name, then linked into place, which
// fails if path exists. A crash leaves no half-written key behind.
func writeNew(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".hostkey-*")
	if err != nil {
		return fmt.Errorf("hostkey: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("hostkey: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("hostkey: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("hostkey: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("hostkey: write %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("hostkey: %w", err)
	}
	return nil
}
