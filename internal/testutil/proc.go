package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// logTail is how much of a process's output is printed when a test fails.
const logTail = 64 << 10

// ProcOptions are the optional settings of StartProcWith.
type ProcOptions struct {
	// Dir is the working directory; "" means the test's.
	Dir string
	// Env is added to the test process's environment (KEY=VALUE; later
	// entries win).
	Env []string
	// Name labels the output in the test log; "" means the program's base name.
	Name string
}

// Proc is a child process started by StartProc. Its stdout and stderr are
// captured together into one buffer. It runs in its own process group,
// which is killed on test cleanup if it still runs; when the test has failed
// its output is written to the test log.
type Proc struct {
	cmd  *exec.Cmd
	name string
	out  *Buffer
	done chan struct{} // closed when the process has exited

	mu    sync.Mutex
	state *os.ProcessState
	err   error // from cmd.Wait, other than a non-zero exit
}

// StartProc starts bin with args, its output captured (see Proc). It fails
// the test if the process cannot be started.
func StartProc(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	return StartProcWith(t, ProcOptions{}, bin, args...)
}

// StartProcWith is StartProc with a working directory and extra environment.
func StartProcWith(t testing.TB, opts ProcOptions, bin string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = opts.Dir
	if len(opts.Env) > 0 {
		cmd.Env = append(os.Environ(), opts.Env...)
	}
	name := opts.Name
	if name == "" {
		name = baseName(bin)
	}
	p := &Proc{cmd: cmd, name: name, out: &Buffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Bound Wait when a grandchild keeps the output pipes open.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("testutil: starting %s: %v", bin, err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.state = cmd.ProcessState
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			p.err = err
		}
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			killGroup(cmd.Process.Pid)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Logf("testutil: %s (pid %d) did not exit after SIGKILL", p.name, cmd.Process.Pid)
			}
		} else {
			// Reap anything the process left behind in its group.
			killGroup(cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("output of %s %s:\n%s", p.name, strings.Join(args, " "), p.out.Tail(logTail))
		}
	})
	return p
}

func baseName(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[i+1:]
	}
	return path
}

// killGroup sends SIGKILL to the process group pgid; errors (such as the
// group being gone already) are ignored.
func killGroup(pgid int) {
	if pgid > 0 {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// Pid returns the process id (also its process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Output returns the stdout and stderr captured so far, interleaved as
// written (up to 32 MiB).
func (p *Proc) Output() string { return p.out.String() }

// Done returns a channel that is closed when the process has exited and its
// output has been collected.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitForOutput waits until the output contains substr and reports whether
// it does; it returns false after timeout, or as soon as the process has
// exited without having written substr.
func (p *Proc) WaitForOutput(substr string, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		out, changed := p.out.Snapshot()
		if strings.Contains(out, substr) {
			return true
		}
		select {
		case <-changed:
		case <-p.done:
			return strings.Contains(p.out.String(), substr)
		case <-timer.C:
			return false
		}
	}
}

// Signal sends sig to the process (not its group). It returns an error if
// the process has exited.
func (p *Proc) Signal(sig os.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s (pid %d) has already exited", p.name, p.Pid())
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the process to exit and returns its exit
// code: the status it exited with, or 128+N when it was killed by signal N
// (the shell's convention). err is non-nil when the process has not exited
// within timeout (it is left running; cleanup kills it) or when waiting
// failed; a non-zero exit status alone is not an error.
func (p *Proc) Wait(timeout time.Duration) (exitCode int, err error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return -1, fmt.Errorf("%s (pid %d) still running after %v", p.name, p.Pid(), timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return exitCode0(p.state), p.err
}

// exitCode0 turns a process state into an exit code, 128+N for signal N.
func exitCode0(st *os.ProcessState) int {
	if st == nil {
		return -1
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}
