package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockFile takes an exclusive lock on path (created if missing) for as long
// as the returned file stays open. A second `kms serve` on the same SQLite
// store gets a clear error instead of both daemons working the same queues.
// The lock is flock(2): the kernel drops it when the process dies, however
// it dies, so a crash never leaves a stale lock behind.
func lockFile(path string) (*os.File, error) {
	// The store's directory may not exist yet: the store creates it too.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("store lock %s: another kms serve is using this store; stop it first", path)
		}
		return nil, fmt.Errorf("store lock %s: %w", path, err)
	}
	return f, nil
}
