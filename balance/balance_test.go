package balance

import (
	"math"
	"sync/atomic"
	"testing"
	"time"
)

type fakeTarget struct {
	name     string
	weight   int
	inFlight atomic.Int64
	since    time.Time
}

func (f *fakeTarget) InFlight() int64  { return f.inFlight.Load() }
func (f *fakeTarget) Weight() int      { return f.weight }
func (f *fakeTarget) Since() time.Time { return f.since }

func targets(weights ...int) []*fakeTarget {
	var out []*fakeTarget
	for i, w := range weights {
		out = append(out, &fakeTarget{name: string(rune('a' + i)), weight: w})
	}
	return out
}

func shares(p Picker[*fakeTarget], ts []*fakeTarget, n int) map[string]float64 {
	count := map[string]int{}
	for range n {
		count[p.Pick(ts).name]++
	}
	out := map[string]float64{}
	for k, v := range count {
		out[k] = float64(v) / float64(n)
	}
	return out
}

func TestRoundRobin_TakesTargetsInTurn(t *testing.T) {
	ts := targets(1, 1, 1)
	p := New[*fakeTarget](RoundRobin, SlowStart{})
	for i := range 9 {
		if got := p.Pick(ts); got != ts[i%3] {
			t.Fatalf("pick %d: %s; want %s", i, got.name, ts[i%3].name)
		}
	}
}

func TestWeighted_OneToThreeIsTwentyFiveToSeventyFive(t *testing.T) {
	ts := targets(1, 3)
	p := New[*fakeTarget](Weighted, SlowStart{})
	got := shares(p, ts, 4000)
	if got["a"] != 0.25 || got["b"] != 0.75 {
		t.Errorf("shares %v; want a 0.25, b 0.75 exactly over whole cycles", got)
	}
	// Smooth: the weight-1 target is never picked twice in a row, nor starved for more
	// than a cycle.
	last, gap := "", 0
	for range 400 {
		name := p.Pick(ts).name
		if name == "a" {
			if last == "a" {
				t.Fatal("weight-1 target picked twice in a row")
			}
			gap = 0
		} else if gap++; gap > 3 {
			t.Fatal("weight-1 target starved for more than a cycle")
		}
		last = name
	}
}

func TestLeastOutstanding_SlowTargetGetsFewerRequests(t *testing.T) {
	ts := targets(1, 1, 1, 1)
	ts[0].inFlight.Store(20) // slow: its requests pile up
	for _, t := range ts[1:] {
		t.inFlight.Store(1)
	}
	p := New[*fakeTarget](LeastOutstanding, SlowStart{})
	got := shares(p, ts, 20000)
	// Round robin would give it 25%; P2C gives it none while it is the busiest, and the
	// others share the rest.
	if got["a"] > 0.01 {
		t.Errorf("slow target's share %.3f; want far below its round-robin share 0.25", got["a"])
	}
	for _, name := range []string{"b", "c", "d"} {
		if math.Abs(got[name]-1.0/3) > 0.03 {
			t.Errorf("share of %s %.3f; want about 1/3", name, got[name])
		}
	}
}

func TestLeastOutstanding_NeverStarvesEqualTargets(t *testing.T) {
	ts := targets(1, 1, 1)
	p := New[*fakeTarget](LeastOutstanding, SlowStart{})
	got := shares(p, ts, 30000)
	for _, name := range []string{"a", "b", "c"} {
		if math.Abs(got[name]-1.0/3) > 0.03 {
			t.Errorf("share of %s %.3f; want about 1/3", name, got[name])
		}
	}
}

// Slow start: a target that came back healthy at since gets a share that rises linearly
// from the floor to its full share over the duration. Measured per fifth of the window.
func TestSlowStart_ShareRampsLinearly(t *testing.T) {
	const d = 100 * time.Second
	for _, name := range []Name{RoundRobin, Weighted} {
		for fifth := range 5 {
			ts := targets(1, 1)
			// Middle of this fifth of the window.
			el := time.Duration((float64(fifth) + 0.5) / 5 * float64(d))
			ts[1].since = time.Now().Add(-el)
			p := New[*fakeTarget](name, SlowStart{Duration: d})
			got := shares(p, ts, 4000)["b"]
			f := DefaultFloor + (1-DefaultFloor)*float64(el)/float64(d)
			want := f / (1 + f)
			if math.Abs(got-want) > 0.02 {
				t.Errorf("%s, fifth %d: recovering target's share %.3f; want %.3f", name, fifth+1, got, want)
			}
		}
	}
}

func TestSlowStart_NotForTheOnlyTarget(t *testing.T) {
	ts := targets(1)
	ts[0].since = time.Now()
	for _, name := range []Name{RoundRobin, Weighted, LeastOutstanding} {
		p := New[*fakeTarget](name, SlowStart{Duration: time.Minute})
		for range 10 {
			if p.Pick(ts) != ts[0] {
				t.Fatalf("%s: the only target was not picked", name)
			}
		}
	}
}

func TestSlowStart_FullShareAfterTheWindow(t *testing.T) {
	s := SlowStart{Duration: 30 * time.Second}
	now := time.Now()
	if f := s.factor(now.Add(-31*time.Second), now); f != 1 {
		t.Errorf("after the window: factor %v; want 1", f)
	}
	if f := s.factor(now, now); f != DefaultFloor {
		t.Errorf("at the start: factor %v; want the floor %v", f, DefaultFloor)
	}
	if f := (SlowStart{}).factor(now, now); f != 1 {
		t.Errorf("slow start off: factor %v; want 1", f)
	}
}

func BenchmarkPick(b *testing.B) {
	ts := targets(1, 2, 3, 4)
	for _, name := range []Name{RoundRobin, Weighted, LeastOutstanding} {
		p := New[*fakeTarget](name, SlowStart{})
		b.Run(string(name), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Pick(ts)
			}
		})
	}
}
