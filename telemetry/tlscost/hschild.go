package tlscost

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The calibration client runs in a child process where it can, so that the process CPU
// of the calibration is the server side's alone, as it is for edgeproxy in production:
// the child is this same executable, started with calibrationClientEnv set, which
// RunChild (called first thing in main) turns into the client. It reads one command per
// line on stdin ("tls" or "plain": one batch of connections), answers "ok" or an error
// line on stdout, and exits at EOF. If the child cannot be started, both sides run in this
// process and the client's own segments are subtracted (see measureHandshakeFactor).

const calibrationClientEnv = "EDGEPROXY_TLSCOST_CALIBRATION_CLIENT"

// handshakeAllocsEnv makes the child measure what a server handshake allocates, print it
// and exit: the measurement records every allocation's stack in the heap profile, and the
// profile keeps each stack it has seen for the life of the process, to be walked at every
// garbage collection (~1 µs per new connection in edgeproxy, had it measured itself).
const handshakeAllocsEnv = "EDGEPROXY_TLSCOST_HANDSHAKE_ALLOCS"

// childArgs are the child's arguments. RunChild ignores them; they make a test binary
// whose TestMain forgot RunChild run no test (instead of all of them, each calibrating
// again), and its answer then makes the calibration fall back to one process.
var childArgs = []string{"-test.run=^$"}

// RunChild runs this process as the calibration's child process if it was started as one
// (the calibration re-executes its own executable with an environment variable set) and
// returns its exit code and true; otherwise it returns at once with false. A program
// that serves with an Accountant calibrating its costs calls it first thing in main, and
// so does a test binary whose tests do (in TestMain):
//
//	if code, ok := tlscost.RunChild(); ok {
//		os.Exit(code)
//	}
//
// Without it the child would be the program itself, started a second time. The
// calibration falls back to running its client in-process when the child answers
// nothing.
func RunChild() (code int, ok bool) {
	if addrs, ok := os.LookupEnv(calibrationClientEnv); ok {
		return runCalibrationClient(addrs, os.Stdin, os.Stdout), true
	}
	if _, ok := os.LookupEnv(handshakeAllocsEnv); ok {
		n, err := measureHandshakeAllocs()
		if err != nil {
			fmt.Println("error", err)
			return 1, true
		}
		fmt.Println(n)
		return 0, true
	}
	return 0, false
}

// handshakeAllocs returns what the server side of one handshake allocates, measured in a
// child process where it can be, else in this one.
func handshakeAllocs() (int64, error) {
	if exe, err := os.Executable(); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, childArgs...)
		cmd.Env = append(os.Environ(), handshakeAllocsEnv+"=1")
		if out, err := cmd.Output(); err == nil {
			if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
				return n, nil
			}
		}
	}
	return measureHandshakeAllocs()
}

func runCalibrationClient(addrs string, in io.Reader, out io.Writer) int {
	tlsAddr, plainAddr, ok := strings.Cut(addrs, ",")
	if !ok {
		return 2
	}
	cfg := &tls.Config{InsecureSkipVerify: true}
	sc := bufio.NewScanner(in)
	kept := map[string][]net.Conn{} // by command: one kept-alive connection per worker
	defer func() {
		for _, cs := range kept {
			for _, c := range cs {
				_ = c.Close()
			}
		}
	}()
	var target net.Listener // the kept-alive exchanges' target (serveTarget)
	defer func() {
		if target != nil {
			_ = target.Close()
		}
	}()
	for sc.Scan() {
		var err error
		switch cmd := sc.Text(); cmd {
		case "target":
			if target == nil {
				if target, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
					fmt.Fprintf(out, "error %v\n", err)
					return 1
				}
				go func() {
					for {
						c, err := target.Accept()
						if err != nil {
							return
						}
						go serveTarget(c)
					}
				}()
			}
			fmt.Fprintln(out, "target", target.Addr().String())
			continue
		case "tls", "plain":
			err = runBatch(func() error {
				if cmd == "tls" {
					return clientOne(nil, tlsAddr, true, cfg, nil)
				}
				return clientOne(nil, plainAddr, false, cfg, nil)
			})
		case "bulk-tls", "bulk-plain", "small-tls", "small-plain":
			kind, proto, _ := strings.Cut(cmd, "-")
			useTLS := proto == "tls"
			addr := plainAddr
			if useTLS {
				addr = tlsAddr
			}
			if kept[cmd] == nil {
				for range handshakeFactorWorkers {
					c, err := dialBulk(addr, useTLS, cfg)
					if err != nil {
						fmt.Fprintf(out, "error %v\n", err)
						return 1
					}
					kept[cmd] = append(kept[cmd], c)
				}
			}
			err = runExchanges(kept[cmd], kind)
		default:
			err = fmt.Errorf("unknown command %q", cmd)
		}
		if err != nil {
			fmt.Fprintf(out, "error %v\n", err)
			continue
		}
		fmt.Fprintln(out, "ok")
	}
	return 0
}

// runBatch makes handshakeFactorConns connections with one, over handshakeFactorWorkers
// concurrent clients, and returns the first error.
func runBatch(one func() error) error {
	var next atomic.Int64
	errs := make(chan error, handshakeFactorWorkers)
	for range handshakeFactorWorkers {
		go func() {
			for next.Add(1) <= handshakeFactorConns {
				if err := one(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range handshakeFactorWorkers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func dialBulk(addr string, useTLS bool, cfg *tls.Config) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if useTLS {
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			_ = c.Close()
			return nil, err
		}
		c = tc
	}
	return c, nil
}

// runExchanges makes a round of exchanges of kind (exchangeKinds) on each of conns,
// concurrently.
func runExchanges(conns []net.Conn, kind string) error {
	k := exchangeKinds[kind]
	errs := make(chan error, len(conns))
	for _, c := range conns {
		go func() {
			req := make([]byte, bulkRequest)
			req[0] = k.first
			resp := make([]byte, k.size)
			for range k.per {
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range conns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

type calibrationClient struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startCalibrationClient(tlsAddr, plainAddr string) (*calibrationClient, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, childArgs...)
	cmd.Env = append(os.Environ(), calibrationClientEnv+"="+tlsAddr+","+plainAddr)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	placeChild(cmd.Process.Pid)
	c := &calibrationClient{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	// A first batch proves the child is the client (and warms it up).
	if err := c.batch(true); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *calibrationClient) batch(useTLS bool) error {
	if useTLS {
		return c.do("tls")
	}
	return c.do("plain")
}

// exchanges runs one round of kept-alive exchanges of kind ("bulk" or "small").
func (c *calibrationClient) exchanges(kind string, useTLS bool) error {
	if useTLS {
		return c.do(kind + "-tls")
	}
	return c.do(kind + "-plain")
}

// do sends one command and waits for its answer, "ok".
func (c *calibrationClient) do(cmd string) error {
	line, err := c.ask(cmd)
	if err == nil && line != "ok" {
		err = errors.New("calibration client: " + line)
	}
	return err
}

// target starts the child's target for the kept-alive exchanges (once) and returns its
// address.
func (c *calibrationClient) target() (string, error) {
	line, err := c.ask("target")
	if err != nil {
		return "", err
	}
	addr, ok := strings.CutPrefix(line, "target ")
	if !ok {
		return "", errors.New("calibration client: " + line)
	}
	return addr, nil
}

// ask sends one command and returns the line answered.
func (c *calibrationClient) ask(cmd string) (string, error) {
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		return "", err
	}
	if !c.out.Scan() {
		return "", errors.New("calibration client: no answer")
	}
	return c.out.Text(), nil
}

func (c *calibrationClient) close() {
	_ = c.in.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}
