package tlscost

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"
)

// The calibration client runs in a child process where it can, so that the process CPU
// of the calibration is the server side's alone, as it is for edgeproxy in production:
// the child is this same executable, started with calibrationClientEnv set, which the
// package's init turns into the client (before main runs). It reads one command per line
// on stdin ("tls" or "plain": one batch of connections), answers "ok" or an error line on
// stdout, and exits at EOF. If the child cannot be started, both sides run in this
// process and the client's own segments are subtracted (see measureHandshakeFactor).

const calibrationClientEnv = "EDGEPROXY_TLSCOST_CALIBRATION_CLIENT"

func init() {
	if addrs, ok := os.LookupEnv(calibrationClientEnv); ok {
		os.Exit(runCalibrationClient(addrs, os.Stdin, os.Stdout))
	}
}

func runCalibrationClient(addrs string, in io.Reader, out io.Writer) int {
	tlsAddr, plainAddr, ok := strings.Cut(addrs, ",")
	if !ok {
		return 2
	}
	cfg := &tls.Config{InsecureSkipVerify: true}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		err := runBatch(func() error {
			if sc.Text() == "tls" {
				return clientOne(nil, tlsAddr, true, cfg, nil)
			}
			return clientOne(nil, plainAddr, false, cfg, nil)
		})
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
	cmd := exec.Command(exe)
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
	c := &calibrationClient{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	// A first batch proves the child is the client (and warms it up).
	if err := c.batch(true); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *calibrationClient) batch(useTLS bool) error {
	cmd := "plain\n"
	if useTLS {
		cmd = "tls\n"
	}
	if _, err := io.WriteString(c.in, cmd); err != nil {
		return err
	}
	if !c.out.Scan() {
		return errors.New("calibration client: no answer")
	}
	if line := c.out.Text(); line != "ok" {
		return errors.New("calibration client: " + line)
	}
	return nil
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
