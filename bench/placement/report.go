package placement

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the report as an aligned table with a header saying how it was
// measured.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "edgeproxy bench: %s, %d CPUs; %v per measurement, %s, %d connections; %s\n\n",
		r.Machine, r.CPUs, r.Duration, roundsText(r.Rounds), r.Connections, r.Pinning)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "placement\tworkload\treq/s\tp50 µs\tp99 µs\tedge CPU µs/req\tbackend CPU µs/req\tload CPU µs/req\tedge TLS metric µs/req\tedge − plain µs/req\t")
	for _, x := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%s\t%s\t\n", x.Placement, x.Workload, x.RPS,
			x.P50us, x.P99us, x.EdgeCPUus, x.BackendCPUus, x.LoadCPUus, optional(x.TLSMetricUs), optional(x.EdgeOverPlainUs))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprint(w, `
edge/backend CPU: utime+stime of each process (/proc/PID/stat) over the window, per request.
edge TLS metric: the edge's own edgeproxy_tls_cpu_seconds_total increase per request; set it
against "edge − plain", the edge's measured extra CPU over plain HTTP under the same load.
`)
	return err
}

func roundsText(n int) string {
	if n <= 1 {
		return "one round"
	}
	return fmt.Sprintf("median of %d interleaved rounds", n)
}

func optional(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *v)
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteSVG draws CPU µs per request at the edge and at the backend as a grouped bar
// chart: one panel per workload (each with its own scale: a handshake costs ten times a
// keep-alive request), a group of two bars per placement. Hand-written SVG, no
// dependencies, readable in any browser.
func (r *Report) WriteSVG(w io.Writer) error {
	var workloads, placements []string
	for _, x := range r.Results {
		if !contains(workloads, x.Workload) {
			workloads = append(workloads, x.Workload)
		}
		if !contains(placements, x.Placement) {
			placements = append(placements, x.Placement)
		}
	}
	const (
		panelW, panelH = 300, 260
		top, bottom    = 70, 50
		left           = 50
		barW           = 22
	)
	width := left + len(workloads)*panelW + 20
	height := top + panelH + bottom
	colors := map[string]string{"edge": "#3b6fb6", "backend": "#e08a2c"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="16" font-weight="bold">Where should TLS end? CPU µs per request, edge and backend</text>`+"\n", left)
	fmt.Fprintf(&b, `<text x="%d" y="40" fill="#555">%s; %v per measurement, %s, %d connections; %s</text>`+"\n", left,
		html.EscapeString(r.Machine), r.Duration, roundsText(r.Rounds), r.Connections, html.EscapeString(r.Pinning))
	for i, name := range []string{"edge", "backend"} {
		x := width - 180 + i*80
		fmt.Fprintf(&b, `<rect x="%d" y="12" width="12" height="12" fill="%s"/><text x="%d" y="22">%s</text>`+"\n", x, colors[name], x+16, name)
	}
	for pi, wl := range workloads {
		x0 := left + pi*panelW
		maxV := 0.0
		for _, x := range r.Results {
			if x.Workload == wl {
				maxV = math.Max(maxV, math.Max(x.EdgeCPUus, x.BackendCPUus))
			}
		}
		scaleMax, step := niceScale(maxV)
		y := func(v float64) float64 { return float64(top+panelH) - v/scaleMax*float64(panelH) }
		// Axis, grid and ticks.
		for v := 0.0; v <= scaleMax+step/2; v += step {
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`, x0, x0+panelW-30, y(v), y(v))
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555" font-size="10">%s</text>`+"\n", x0-4, y(v)+3, trimFloat(v))
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" font-weight="bold">%s</text>`+"\n", x0+(panelW-30)/2, top-8, workloadTitle(wl))
		groupW := float64(panelW-30) / float64(len(placements))
		for gi, pl := range placements {
			var res *Result
			for i := range r.Results {
				if r.Results[i].Workload == wl && r.Results[i].Placement == pl {
					res = &r.Results[i]
				}
			}
			gx := float64(x0) + groupW*float64(gi) + groupW/2
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", gx, top+panelH+16, pl)
			if res == nil {
				continue
			}
			for bi, v := range []float64{res.EdgeCPUus, res.BackendCPUus} {
				name := []string{"edge", "backend"}[bi]
				bx := gx - barW + float64(bi*barW)
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s, %s: %s CPU %.1f µs/request</title></rect>`+"\n",
					bx, y(v), barW-2, float64(top+panelH)-y(v), colors[name], pl, wl, name, v)
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>`+"\n", bx+float64(barW-2)/2, y(v)-3, trimFloat(math.Round(v)))
			}
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555" font-size="11">plain: HTTP end to end · edge: TLS ends at the edge · backend: passed through by SNI, TLS ends at the backend · reencrypt: TLS to the edge and from it</text>`+"\n", left, height-12)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func workloadTitle(w string) string {
	switch w {
	case "keepalive":
		return "keep-alive, 64 B responses"
	case "handshake":
		return "new connection, full handshake"
	case "bulk":
		return "keep-alive, 64 KiB responses"
	}
	return w
}

// niceScale returns an axis maximum of 1, 2 or 5 × 10^k steps above v, and the step.
func niceScale(v float64) (maxV, step float64) {
	if v <= 0 {
		return 1, 0.25
	}
	raw := v / 4
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * mag; step >= raw {
			break
		}
	}
	return math.Ceil(v/step) * step, step
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
