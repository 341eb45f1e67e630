//go:build linux

package testenv

import (
	"os/exec"
	"syscall"
)

// detach puts the child in its own process group, so that killGroup also
// reaches a forked AOF-rewrite child, and asks the kernel to kill it if the
// test binary dies first (a -timeout panic), so no server outlives its test.
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup sends SIGKILL to the child's process group.
func killGroup(cmd *exec.Cmd) error {
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}
