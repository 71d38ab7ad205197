package fdholder

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Start connects to the holder at path, starting one if none answers:
// exe with args (`sluice fd-holder --socket PATH`) in a session of its
// own (so that the gateway's signals, its terminal's and a kill of its
// process group do not reach it), its output appended to logPath. It
// waits up to 10 s for the new holder's socket.
func Start(path, logPath, exe string, args ...string) (*Client, error) {
	cl, err := Dial(path)
	if err == nil {
		return cl, nil
	}
	if !IsAbsent(err) {
		return nil, fmt.Errorf("fdholder: %s: %w", path, err)
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fdholder: log: %w", err)
	}
	defer lf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fdholder: start %s: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaped if it exits while we run
	deadline := time.Now().Add(10 * time.Second)
	for {
		cl, err := Dial(path)
		if err == nil {
			return cl, nil
		}
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("fdholder: the holder exited at start: %v (see %s)", werr, logPath)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("fdholder: no holder on %s 10 s after starting it: %w", path, err)
		}
	}
}
