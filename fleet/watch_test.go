package fleet

import (
	"context"
	"sync"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

// names records what a Watch callback was given.
type names struct {
	mu  sync.Mutex
	got []string
}

func (n *names) add(name string) {
	n.mu.Lock()
	n.got = append(n.got, name)
	n.mu.Unlock()
}

func (n *names) count(name string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, g := range n.got {
		if g == name {
			c++
		}
	}
	return c
}

// Issue 15: a value stored by one replica reaches every other within seconds, and a
// watcher is asked to re-read everything after Redis comes back.
func TestWatch_NotifiesEveryReplica(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := testOptions(r)
	opts.ResyncInterval = time.Hour // only resubscriptions ask for a resync here
	a := newTestStore(t, opts)
	b := newTestStore(t, opts)
	var got names
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { b.Watch(ctx, got.add) })
	waitFor(t, 5*time.Second, "b's first resync", func() bool { return got.count(ResyncAll) >= 1 })

	if err := a.Put(ctx, "a.test", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b told of a's Put", func() bool { return got.count("a.test") == 1 })
	if err := a.Delete(ctx, "a.test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b told of a's Delete", func() bool { return got.count("a.test") == 2 })

	resyncs := got.count(ResyncAll)
	r.Stop()
	r.Start()
	waitFor(t, 10*time.Second, "a resync after Redis came back", func() bool { return got.count(ResyncAll) > resyncs })
}

// The fallback for lost notifications: a resync every ResyncInterval.
func TestWatch_PeriodicResync(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	opts := testOptions(r)
	opts.ResyncInterval = 200 * time.Millisecond
	s := newTestStore(t, opts)
	var got names
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { s.Watch(ctx, got.add) })
	waitFor(t, 5*time.Second, "three resyncs", func() bool { return got.count(ResyncAll) >= 3 })
}

// Close does not wait for the subscription's receive, which waits up to 10s for a
// message: an edge shutting down is not held up by it.
func TestStore_CloseEndsAWaitingReceive(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{})
	opts := testOptions(r)
	opts.ResyncInterval = time.Minute // the receive waits its longest, 10s
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), "a.test", []byte("x")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the subscription is receiving
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waiting after 5s, half the receive's 10s timeout")
	}
}
