// Package logformat is edgeproxy's slog handler: text or JSON as log.format says, and
// switchable while it is in use, so that a reload applies log.format to every logger
// already handed out (those of the edge, the proxy, the health checker...).
package logformat

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"

	"edgeproxy/config"
)

// Handler writes records in the current format. Loggers derived from it (With,
// WithGroup) follow its format changes. Use New.
type Handler struct {
	root *root
	// ops are the With and WithGroup calls that derived this handler from the root's.
	ops []func(slog.Handler) slog.Handler
	// cache is the root's handler with ops applied, rebuilt when the format changes.
	cache atomic.Pointer[derived]
}

type root struct {
	w    io.Writer
	base atomic.Pointer[slog.Handler]
}

type derived struct {
	base, h slog.Handler
}

// New returns a Handler writing to w in format f.
func New(w io.Writer, f config.LogFormat) *Handler {
	h := &Handler{root: &root{w: w}}
	h.SetFormat(f)
	return h
}

// SetFormat makes every logger of this Handler, derived ones included, write in format f
// from now on.
func (h *Handler) SetFormat(f config.LogFormat) {
	var base slog.Handler
	if f == config.LogJSON {
		base = slog.NewJSONHandler(h.root.w, nil)
	} else {
		base = slog.NewTextHandler(h.root.w, nil)
	}
	h.root.base.Store(&base)
}

// current returns the handler to write with: the root's current one with ops applied.
func (h *Handler) current() slog.Handler {
	base := *h.root.base.Load()
	if d := h.cache.Load(); d != nil && d.base == base {
		return d.h
	}
	out := base
	for _, op := range h.ops {
		out = op(out)
	}
	h.cache.Store(&derived{base: base, h: out})
	return out
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.current().Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	return h.current().Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return h.derive(func(x slog.Handler) slog.Handler { return x.WithAttrs(attrs) })
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return h.derive(func(x slog.Handler) slog.Handler { return x.WithGroup(name) })
}

func (h *Handler) derive(op func(slog.Handler) slog.Handler) *Handler {
	return &Handler{root: h.root, ops: append(h.ops[:len(h.ops):len(h.ops)], op)}
}
