//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package enroll

import (
	"errors"
	"io/fs"
	"os"
	"runtime"
)

// tryLock fails: enroll edits authorized_keys only where flock exists.
func tryLock(*os.File) (bool, error) {
	return false, errors.New("file locking is not supported on " + runtime.GOOS)
}

// chownLike does nothing: file owners are a Unix matter.
func chownLike(*os.File, fs.FileInfo) error { return nil }
