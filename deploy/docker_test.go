package deploy_test

import (
	"bufio"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is one FROM and the instructions after it.
type stage struct {
	from, name string
	body       []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.body {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// last returns the last instruction cmd of the stage: the one Docker uses for USER,
// ENTRYPOINT, CMD and HEALTHCHECK.
func (s stage) last(t *testing.T, cmd string) instruction {
	t.Helper()
	ins := s.all(cmd)
	if len(ins) == 0 {
		t.Fatalf("stage %q has no %s", s.from, cmd)
	}
	return ins[len(ins)-1]
}

// parseDockerfile reads the Dockerfile's stages. It knows the syntax this repository uses:
// comments, backslash continuations and one instruction per logical line.
func parseDockerfile(t *testing.T, file string) []stage {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("%s:%d: %s before FROM", file, start, in.cmd)
		}
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// execForm decodes an instruction's JSON (exec form) argument list; shell form needs a
// shell, which the final image has not.
func execForm(t *testing.T, in instruction, args string) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal([]byte(args), &out); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s is not in exec form [\"...\"]: %v", in.line, in.cmd, args, err)
	}
	return out
}

// No Docker engine is reachable here, so the image is not built; this checks the shape the
// README promises: a Go build stage making a static binary, a minimal final stage running
// as non-root with the certificate cache on a volume and `edgeproxy healthcheck` as
// HEALTHCHECK.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "../Dockerfile")
	if len(stages) < 2 {
		t.Fatalf("got %d stages; want a build stage and a final stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	if !strings.HasPrefix(build.from, "golang:1.26") || build.name == "" {
		t.Errorf("build stage: got FROM %s AS %q; want golang:1.26 AS <name>", build.from, build.name)
	}
	var buildCmd string
	for _, in := range build.all("RUN") {
		if strings.Contains(in.args, "go build") {
			buildCmd = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/edgeproxy", "-o /out/edgeproxy"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("build stage: the go build RUN %q lacks %q", buildCmd, want)
		}
	}

	if final.from != "scratch" && !strings.HasPrefix(final.from, "gcr.io/distroless/static") {
		t.Errorf("final stage: got FROM %s; want scratch or distroless static", final.from)
	}
	if runs := final.all("RUN"); len(runs) > 0 {
		t.Errorf("final stage: RUN at line %d; the final image has no shell", runs[0].line)
	}
	copied := false
	for _, in := range final.all("COPY") {
		if strings.Contains(in.args, "--from="+build.name) && strings.HasSuffix(in.args, "/out/edgeproxy /edgeproxy") {
			copied = true
		}
	}
	if !copied {
		t.Errorf("final stage: no COPY --from=%s /out/edgeproxy /edgeproxy", build.name)
	}

	user := final.last(t, "USER").args
	uid, _, _ := strings.Cut(user, ":")
	if uid != "65532" {
		t.Errorf("final stage: got USER %s; want 65532 (distroless nonroot), not root", user)
	}
	if got := strings.Fields(final.last(t, "EXPOSE").args); !slices.Contains(got, "80") || !slices.Contains(got, "443") {
		t.Errorf("final stage: got EXPOSE %v; want 80 and 443", got)
	}
	if got := execForm(t, final.last(t, "VOLUME"), final.last(t, "VOLUME").args); !slices.Equal(got, []string{"/var/lib/edgeproxy"}) {
		t.Errorf("final stage: got VOLUME %v; want [/var/lib/edgeproxy]", got)
	}
	ownedVolume := false
	for _, in := range final.all("COPY") {
		if strings.Contains(in.args, "--chown=65532:65532") && strings.HasSuffix(in.args, " /var/lib/edgeproxy") {
			ownedVolume = true
		}
	}
	if !ownedVolume {
		t.Errorf("final stage: /var/lib/edgeproxy is not created owned by 65532: a new named volume would be root's")
	}

	entry := execForm(t, final.last(t, "ENTRYPOINT"), final.last(t, "ENTRYPOINT").args)
	cmd := execForm(t, final.last(t, "CMD"), final.last(t, "CMD").args)
	run := append(entry, cmd...)
	const config = "/etc/edgeproxy/edgeproxy.yaml"
	if want := []string{"/edgeproxy", "run", "-config", config}; !slices.Equal(run, want) {
		t.Errorf("final stage: ENTRYPOINT+CMD run %q; want %q", run, want)
	}

	hc := final.last(t, "HEALTHCHECK")
	_, hcArgs, ok := strings.Cut(hc.args, "CMD ")
	if !ok {
		t.Fatalf("Dockerfile:%d: HEALTHCHECK without CMD: %q", hc.line, hc.args)
	}
	if got, want := execForm(t, hc, hcArgs), []string{"/edgeproxy", "healthcheck", "-config", config}; !slices.Equal(got, want) {
		t.Errorf("HEALTHCHECK CMD %q; want %q (no shell or curl in the image)", got, want)
	}
}
