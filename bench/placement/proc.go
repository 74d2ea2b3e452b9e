package placement

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"edgeproxy/internal/testutil/fixture"
)

// proc is a child process of the benchmark.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *fixture.Buffer // stdout and stderr
	done chan struct{}
}

// startProc starts bin with args, pinned to cpu when cpu >= 0. The child inherits the
// affinity of the thread that forks it, so the mask is set on a locked thread around
// the start: the whole child, every thread its runtime makes, is pinned from its first
// instruction (and Go sets its GOMAXPROCS from it).
func startProc(name string, cpu int, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(bin, args...), out: &fixture.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = sysProcAttr()
	err := withAffinity(cpu, p.cmd.Start)
	if err != nil {
		return nil, fmt.Errorf("placement: starting %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to 10s, then kills.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// wait waits for the process to exit, up to timeout (then kills it).
func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("placement: %s did not finish within %v", p.name, timeout)
	}
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("placement: %s: %s\n%s", p.name, p.cmd.ProcessState, tail(p.out.String(), 2000))
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// ProcCPU returns the user+system CPU seconds process pid has used (/proc/PID/stat:
// utime+stime, in USER_HZ = 100 ticks per second on Linux), its own threads included,
// its children not.
func ProcCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields resume after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 > len(b) {
		return 0, fmt.Errorf("placement: /proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("placement: /proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("placement: /proc/%d/stat: unexpected format", pid)
	}
	return (utime + stime) / 100, nil
}
