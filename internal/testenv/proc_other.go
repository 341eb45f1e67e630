//go:build !linux

package testenv

import "os/exec"

// detach does nothing off Linux: there, only the server process itself is
// killed.
func detach(*exec.Cmd) {}

// killGroup kills the child process.
func killGroup(cmd *exec.Cmd) error {
	return cmd.Process.Kill()
}
