package testutil

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PythonPath is the interpreter that runs Django: Debian's python3-django
// loads only under Debian's own python3 (the python3 first on PATH may be
// another interpreter).
const PythonPath = "/usr/bin/python3"

// DjangoDefaultHost is the site's host name when DjangoOptions.AllowedHosts
// is empty.
const DjangoDefaultHost = "app.test"

// Credentials of the superuser that StartDjango creates when
// DjangoOptions.Migrate is set.
const (
	DjangoAdminUser     = "admin"
	DjangoAdminPassword = "edgeproxy-test-password"
)

// djangoStartTimeout bounds how long StartDjango and Django.Start wait for
// the site to answer.
const djangoStartTimeout = 30 * time.Second

// djangoStopTimeout bounds a graceful stop: gunicorn's --graceful-timeout
// is 5 s, plus time to exit.
const djangoStopTimeout = 15 * time.Second

// RequireDjango checks that /usr/bin/python3 can import django and gunicorn
// (Debian packages python3-django and gunicorn). When it cannot, the test
// fails in CI and is skipped elsewhere.
func RequireDjango(t testing.TB) {
	t.Helper()
	if err := djangoAvailable(); err != nil {
		missing(t, "Django and gunicorn under "+PythonPath+" ("+err.Error()+")",
			"apt-get install -y python3-django gunicorn")
	}
}

var (
	djangoCheckOnce sync.Once
	djangoCheckErr  error
)

func djangoAvailable() error {
	djangoCheckOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, PythonPath, "-c", "import django, gunicorn")
		cmd.Env = pythonEnv("")
		if out, err := cmd.CombinedOutput(); err != nil {
			djangoCheckErr = fmt.Errorf("%v: %s", err, strings.TrimSpace(lastLine(string(out))))
		}
	})
	return djangoCheckErr
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// pythonEnv is a small, clean environment for /usr/bin/python3, free of the
// variables (PYTHONHOME, PYTHONPATH, virtualenvs) that point at another
// interpreter's libraries.
func pythonEnv(projectDir string) []string {
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"LANG=C.UTF-8",
		"LC_ALL=C.UTF-8",
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
	}
	for _, k := range []string{"HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	if projectDir != "" {
		env = append(env, "PYTHONPATH="+projectDir, "DJANGO_SETTINGS_MODULE=djangosite.settings")
	}
	return env
}

// DjangoDir returns the directory of the test Django project (the one that
// holds manage.py). It is found from this source file's location, or else
// from the module root above the working directory.
func DjangoDir() (string, error) {
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		candidates = append(candidates, filepath.Join(filepath.Dir(file), "djangosite"))
	}
	if root, err := moduleRoot(); err == nil {
		candidates = append(candidates, filepath.Join(root, "internal", "testutil", "djangosite"))
	}
	for _, c := range candidates {
		if _, err := os.Stat(filepath.Join(c, "manage.py")); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("test Django project not found (looked in %q)", candidates)
}

// DjangoOptions configure StartDjango. The zero value is a site for
// app.test with one worker of four threads.
type DjangoOptions struct {
	// AllowedHosts is Django's ALLOWED_HOSTS; empty means ["app.test"].
	AllowedHosts []string
	// Instance is the name the site reports (in "/" and /whoami); empty
	// means the address it listens on.
	Instance string
	// Workers is gunicorn's worker process count; 0 means 1.
	Workers int
	// Threads is the thread count per worker; 0 means 4.
	Threads int
	// CSRFTrustedOrigins is Django's CSRF_TRUSTED_ORIGINS (Django 3.2
	// takes host names, such as "app.test").
	CSRFTrustedOrigins []string
	// Migrate runs "manage.py migrate" on the site's own sqlite database
	// before the first start and creates the superuser DjangoAdminUser with
	// DjangoAdminPassword, so that logging in to /admin/ works. The admin
	// login page renders without it.
	Migrate bool
	// AccessLog makes gunicorn log every request to the captured output.
	AccessLog bool
	// Args are extra gunicorn arguments (such as "--keep-alive", "5").
	Args []string
	// Env are extra environment variables (KEY=VALUE) for the site; later
	// entries win over the ones StartDjango sets.
	Env []string
}

// Django is a running test Django site: the project under
// internal/testutil/djangosite served by gunicorn on a loopback address.
// Stop, Kill and Start may be called in any order; the site is killed when
// the test ends, and its output is written to the test log if the test
// failed. Start (like StartDjango) must be called from the test's goroutine.
type Django struct {
	// Addr is the host:port the site listens on.
	Addr string
	// Host is the first allowed host, for the Host header of requests.
	Host string

	t    testing.TB
	dir  string
	args []string
	env  []string
	out  *Buffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartDjango starts the test Django site on addr (a loopback host:port,
// such as one from LoopbackAddr) under gunicorn, and waits until it answers
// HTTP. It calls RequireDjango first, so the test is skipped (or fails, in
// CI) when Django is not installed. The site is killed on test cleanup.
func StartDjango(t testing.TB, addr string, opts DjangoOptions) *Django {
	t.Helper()
	RequireDjango(t)
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("testutil: bad Django address %q: %v", addr, err)
	}
	checkLoopback(t, host)
	dir, err := DjangoDir()
	if err != nil {
		t.Fatalf("testutil: %v", err)
	}
	hosts := opts.AllowedHosts
	if len(hosts) == 0 {
		hosts = []string{DjangoDefaultHost}
	}
	instance := opts.Instance
	if instance == "" {
		instance = addr
	}
	workers, threads := opts.Workers, opts.Threads
	if workers <= 0 {
		workers = 1
	}
	if threads <= 0 {
		threads = 4
	}
	env := append(pythonEnv(dir),
		"ALLOWED_HOSTS="+strings.Join(hosts, ","),
		"INSTANCE="+instance,
		"CSRF_TRUSTED_ORIGINS="+strings.Join(opts.CSRFTrustedOrigins, ","),
		"DJANGO_DB="+filepath.Join(t.TempDir(), "db.sqlite3"),
	)
	env = append(env, opts.Env...)
	args := []string{"-m", "gunicorn",
		"--bind", addr,
		"--workers", strconv.Itoa(workers),
		"--threads", strconv.Itoa(threads),
		"--timeout", "60",
		"--graceful-timeout", "5",
		// Load Django in the master before binding and forking, so that
		// accepting connections means the workers are ready at once.
		"--preload",
		"--chdir", dir,
	}
	if opts.AccessLog {
		args = append(args, "--access-logfile", "-")
	}
	args = append(args, opts.Args...)
	args = append(args, "djangosite.wsgi:application")

	d := &Django{
		Addr: addr,
		Host: probeHost(hosts[0]),
		t:    t,
		dir:  dir,
		args: args,
		env:  env,
		out:  &Buffer{},
	}
	t.Cleanup(func() {
		d.Kill() // no need to be graceful at the end, and faster
		if t.Failed() {
			t.Logf("output of Django %s:\n%s", addr, d.out.Tail(logTail))
		}
	})
	if opts.Migrate {
		d.migrate()
	}
	d.Start()
	return d
}

// probeHost turns an ALLOWED_HOSTS entry into a host name it matches.
func probeHost(h string) string {
	switch {
	case h == "*":
		return DjangoDefaultHost
	case strings.HasPrefix(h, "."):
		return h[1:]
	}
	return h
}

// migrate creates the database schema and the superuser.
func (d *Django) migrate() {
	d.t.Helper()
	for _, argv := range [][]string{
		{"manage.py", "migrate", "--noinput", "-v", "0"},
		{"manage.py", "createsuperuser", "--noinput", "--username", DjangoAdminUser, "--email", "admin@app.test"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, PythonPath, argv...)
		cmd.Dir = d.dir
		cmd.Env = append(append([]string{}, d.env...), "DJANGO_SUPERUSER_PASSWORD="+DjangoAdminPassword)
		cmd.Stdout = d.out
		cmd.Stderr = d.out
		err := cmd.Run()
		cancel()
		if err != nil {
			d.t.Fatalf("testutil: %s %s failed: %v\n%s", PythonPath, strings.Join(argv, " "), err, d.out.Tail(logTail))
		}
	}
}

// Start starts the site (again) on the same address and waits until it
// answers HTTP, failing the test if it does not within 30 s. It fails the
// test if the site is running already (a gunicorn that died on its own
// counts as not running).
func (d *Django) Start() {
	d.t.Helper()
	d.mu.Lock()
	if d.cmd != nil && d.exitedLocked() {
		killGroup(d.cmd.Process.Pid) // it died on its own: clean up and start anew
		d.cmd, d.done = nil, nil
	}
	if d.cmd != nil {
		d.mu.Unlock()
		d.t.Fatalf("testutil: Django on %s is already running", d.Addr)
	}
	cmd := exec.Command(PythonPath, d.args...)
	cmd.Dir = d.dir
	cmd.Env = d.env
	cmd.Stdout = d.out
	cmd.Stderr = d.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	fmt.Fprintf(d.out, "--- testutil: starting gunicorn on %s at %s\n", d.Addr, time.Now().Format("15:04:05.000"))
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		d.t.Fatalf("testutil: starting gunicorn: %v", err)
	}
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(d.out, "--- testutil: gunicorn (pid %d) exited: %v\n", cmd.Process.Pid, exitDesc(cmd, err))
		close(done)
	}()
	d.cmd, d.done = cmd, done
	d.mu.Unlock()

	start := time.Now()
	if err := d.waitReady(djangoStartTimeout, done); err != nil {
		d.Kill()
		d.t.Fatalf("testutil: Django on %s not ready: %v\noutput:\n%s", d.Addr, err, d.out.Tail(logTail))
	}
	fmt.Fprintf(d.out, "--- testutil: Django on %s ready after %v\n", d.Addr, time.Since(start).Round(time.Millisecond))
}

func exitDesc(cmd *exec.Cmd, err error) string {
	if cmd.ProcessState != nil {
		return cmd.ProcessState.String()
	}
	return fmt.Sprint(err)
}

// waitReady waits until the site accepts TCP connections and then answers
// an HTTP request (any status).
func (d *Django) waitReady(timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	if err := waitTCP(d.Addr, timeout, exited); err != nil {
		return err
	}
	var lastErr error
	for time.Now().Before(deadline) {
		if lastErr = httpProbe(d.Addr, d.Host); lastErr == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("gunicorn exited: %v", lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("no HTTP answer within %v: %v", timeout, lastErr)
}

// httpProbe sends one GET / over a fresh connection and reads the status
// line.
func httpProbe(addr, host string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// URL returns "http://ADDR" + path.
func (d *Django) URL(path string) string { return "http://" + d.Addr + path }

// Output returns gunicorn's and Django's output so far, across restarts.
func (d *Django) Output() string { return d.out.String() }

// Pid returns the gunicorn master's process id, or 0 when not running.
func (d *Django) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Running reports whether the gunicorn master is running: started, not
// stopped or killed, and not dead on its own.
func (d *Django) Running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd != nil && !d.exitedLocked()
}

// exitedLocked reports whether the current process has exited; d.mu held.
func (d *Django) exitedLocked() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Stop stops the site gracefully: SIGTERM to the gunicorn master, which
// lets in-flight requests finish (up to 5 s), then waits for it to exit.
// After 15 s, or once the master has exited, it kills what remains of the
// process group. It does nothing when the site is not running.
func (d *Django) Stop() { d.halt(syscall.SIGTERM, djangoStopTimeout) }

// Kill kills the site at once (SIGKILL to gunicorn's whole process group,
// workers included), like a crash, and waits for it to exit. It does
// nothing when the site is not running.
func (d *Django) Kill() { d.halt(syscall.SIGKILL, 10*time.Second) }

func (d *Django) halt(sig syscall.Signal, timeout time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return
	}
	pid := d.cmd.Process.Pid
	if sig == syscall.SIGKILL {
		killGroup(pid)
	} else {
		_ = d.cmd.Process.Signal(sig)
	}
	select {
	case <-d.done:
	case <-time.After(timeout):
		fmt.Fprintf(d.out, "--- testutil: gunicorn (pid %d) still running %v after %v; killing its group\n", pid, timeout, sig)
		killGroup(pid)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			fmt.Fprintf(d.out, "--- testutil: gunicorn (pid %d) did not exit after SIGKILL\n", pid)
		}
	}
	killGroup(pid) // workers left behind, if any
	d.cmd, d.done = nil, nil
}
