// Command edgeproxy is a self-hosted HTTPS edge for Django: TLS termination with static,
// self-signed or ACME certificates, ALB-style health checks and round robin to the
// healthy backends. This file only parses flags, loads the configuration, wires the parts
// and handles signals; the parts live in their own packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"edgeproxy/config"
	"edgeproxy/doctor"
	"edgeproxy/edge"
	"edgeproxy/internal/demo"
	"edgeproxy/internal/logformat"
	"edgeproxy/internal/sdnotify"
	"edgeproxy/telemetry/tlscost"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

const defaultConfig = "/etc/edgeproxy/edgeproxy.yaml"

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "serve with a configuration file", runCmd},
		{"validate", "check a configuration file and print every problem", validateCmd},
		{"doctor", "check this box's HTTPS set-up (ports, DNS, certificates, targets, ACME) and say what to fix", doctorCmd},
		{"demo", "serve https on 127.0.0.1:8443 in front of three built-in backends", demoCmd},
		{"healthcheck", "exit 0 if the running edge's /healthz answers 200 (Docker HEALTHCHECK)", healthcheckCmd},
		{"bench", "measure where TLS should end: plain, edge, backend (passthrough), re-encrypt; CPU per request", benchCmd},
		{"version", "print the version", versionCmd},
	}
}

func main() {
	// The TLS cost calibration re-executes this binary as its client process.
	if code, ok := tlscost.RunChild(); ok {
		os.Exit(code)
	}
	os.Exit(mainArgs(os.Args[1:], os.Stdout, os.Stderr))
}

func mainArgs(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "edgeproxy: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: edgeproxy <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'edgeproxy <command> -h' for a command's flags.")
}

// newFlags returns a flag set whose -h prints usage to stderr and exits 0.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: edgeproxy %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; done is true when the caller should return code at once (after
// -h, or on a flag error).
func parseFlags(fs *flag.FlagSet, args []string) (code int, done bool) {
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return 0, true
	case err != nil:
		return 2, true
	case fs.NArg() > 0:
		fmt.Fprintf(fs.Output(), "edgeproxy %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, true
	}
	return 0, false
}

func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", "run [-config FILE]", stderr)
	file := fs.String("config", defaultConfig, "configuration `file`")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	logs := logformat.New(stderr, cfg.Resolved.LogFormat)
	for _, w := range cfg.Warnings {
		slog.New(logs).Warn(w.String())
	}
	return serve(cfg, logs, func() (*config.Config, error) { return config.Load(*file) }, nil)
}

// serve runs an edge until SIGTERM or SIGINT, then drains. On SIGHUP it calls reload, if
// not nil, for a new configuration and applies it; an invalid one is logged and the old one
// keeps serving; log.format applies to logs once the edge has taken the rest. ready, if
// not nil, is called once the listeners are bound.
func serve(cfg *config.Config, logs *logformat.Handler, reload func() (*config.Config, error), ready func(*edge.Edge)) int {
	log := slog.New(logs)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	e, err := edge.New(cfg, log)
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	if ready != nil {
		ready(e)
	}
	// The listeners are bound, so connections made from now on wait in the backlog until
	// Run accepts them: tell systemd (Type=notify) the start-up is done, and when the signal
	// arrives, that the drain has begun. Both do nothing outside systemd.
	notifyErr := func(err error) {
		if err != nil {
			log.Warn(err.Error())
		}
	}
	notifyErr(sdnotify.Ready())
	stopNotify := context.AfterFunc(ctx, func() { notifyErr(sdnotify.Stopping()) })
	defer stopNotify()
	if reload != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go reloadOnSignal(ctx, hup, e, logs, reload, notifyErr)
	}
	if err := e.Run(ctx); err != nil {
		log.Error(err.Error())
		return 1
	}
	return 0
}

// reloadOnSignal applies a new configuration on each signal until ctx is done.
func reloadOnSignal(ctx context.Context, hup <-chan os.Signal, e *edge.Edge, logs *logformat.Handler, reload func() (*config.Config, error), notifyErr func(error)) {
	log := slog.New(logs)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		notifyErr(sdnotify.Reloading())
		start := time.Now()
		cfg, err := reload()
		if err == nil {
			err = e.Reload(cfg)
		}
		if err != nil {
			log.Error("reload rejected, the previous configuration keeps serving:\n" + err.Error())
		} else {
			logs.SetFormat(cfg.Resolved.LogFormat)
			for _, w := range cfg.Warnings {
				log.Warn(w.String())
			}
			log.Info("reload done", "took", time.Since(start).Round(time.Microsecond))
		}
		notifyErr(sdnotify.Ready())
	}
}

func validateCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("validate", "validate [-config FILE] [-syntax-only]", stderr)
	file := fs.String("config", defaultConfig, "configuration `file`")
	syntaxOnly := fs.Bool("syntax-only", false, "skip checks of this machine (files) and of the ACME CA (tls.acme.profile), for a config meant for another host")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	load := config.Load
	if *syntaxOnly {
		load = config.LoadSyntax
	}
	cfg, err := load(*file)
	var cerr *config.Error
	switch {
	case errors.As(err, &cerr):
		for _, p := range cerr.Problems {
			fmt.Fprintln(stdout, p)
		}
		return 1
	case err != nil:
		fmt.Fprintln(stdout, err)
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stdout, w)
	}
	if !*syntaxOnly {
		// The one check that asks the network: whether the CA offers tls.acme.profile.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p := doctor.CheckACMEProfile(ctx, cfg)
		cancel()
		if p != nil {
			fmt.Fprintln(stdout, p)
			if !p.Warning {
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "%s: ok\n", *file)
	return 0
}

func demoCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("demo", "demo [-https ADDR] [-metrics ADDR]", stderr)
	httpsAddr := fs.String("https", "127.0.0.1:8443", "HTTPS listener `address`")
	metricsAddr := fs.String("metrics", "127.0.0.1:9180", "metrics listener `address`")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	targets, err := demo.Backends(ctx)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	cfg, err := demo.Config(*httpsAddr, *metricsAddr, targets)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return serve(cfg, logformat.New(stderr, cfg.Resolved.LogFormat), nil, func(e *edge.Edge) {
		a := e.Addrs()
		fmt.Fprintf(stdout, "edgeproxy demo: https://%s in front of %v\n", a["https"], targets)
		fmt.Fprintf(stdout, "  try:     curl -k https://%s/\n", a["https"])
		fmt.Fprintf(stdout, "  metrics: http://%s/metrics   targets: http://%s/targets\n", a["metrics"], a["metrics"])
		fmt.Fprintln(stdout, "  backend-3 fails its health check now and then; watch the log. Ctrl-C stops.")
	})
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "version", stderr)
	if code, done := parseFlags(fs, args); done {
		return code
	}
	v := version
	if v == "" {
		v = "(devel)"
		if bi, ok := debug.ReadBuildInfo(); ok {
			v = bi.Main.Version
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v += " " + s.Value[:12]
				}
			}
		}
	}
	fmt.Fprintf(stdout, "edgeproxy %s\n", v)
	return 0
}
