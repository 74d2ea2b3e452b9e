package tlscost

import (
	"context"
	"math"
	"os/exec"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The data terms are fitted from every round pooled, the start-up's and refinement's
// alike, and the handshake factor gives back the reads' share at the per-read cost fitted.
func TestCalSamples_FitFromEveryRound(t *testing.T) {
	// DataFactor 1.5, PerRead 4000 ns; two moments whose rounds differ, as start-ups do.
	s := &calSamples{HS: hsSums{Extra: 1e6 + 4000*50, Seg: 5e5, Reads: 50}}
	for i := range 16 {
		k := float64(1 + i%2) // the second moment moves twice the bytes per round
		s.Bulk = append(s.Bulk, dataRound{Extra: 1.5*10000*k + 4000*100, Charged: 10000 * k, Reads: 100})
		s.Small = append(s.Small, dataRound{Extra: 1.5*2000 + 4000*400*k, Charged: 2000, Reads: 400 * k})
	}
	factor, dataFactor, perRead, err := s.fit()
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(dataFactor-1.5) > 1e-9 || math.Abs(perRead-4e-6) > 1e-15 {
		t.Errorf("fit: data factor %v, per read %v; want 1.5, 4e-6", dataFactor, perRead)
	}
	if math.Abs(factor-2) > 1e-9 {
		t.Errorf("fit: handshake factor %v; want 2 (the reads' 200 µs taken out of 1.2 ms over 0.5 ms of segments)", factor)
	}
	if got := s.HS.factor(1); got != 1 {
		t.Errorf("handshake factor with reads costing more than all the extra CPU: %v; want 1 (never below)", got)
	}
}

// The start-up's rounds, measured while the edge was starting, count until refinement has
// as many of its own, and then no more.
func TestCalSamples_StartUpRoundsLeaveOnceRefinementHasAsMany(t *testing.T) {
	s := &calSamples{StartUp: 4}
	for i := range 7 {
		s.Bulk, s.Small = append(s.Bulk, dataRound{Extra: float64(i)}), append(s.Small, dataRound{Extra: float64(i)})
		s.dropStartUp()
	}
	if s.rounds() != 7 || s.StartUp != 4 {
		t.Fatalf("3 refined rounds beside 4 of the start-up: %d rounds, start-up %d; want all 7 kept", s.rounds(), s.StartUp)
	}
	s.Bulk, s.Small = append(s.Bulk, dataRound{Extra: 7}), append(s.Small, dataRound{Extra: 7})
	s.dropStartUp()
	if s.rounds() != 4 || s.StartUp != 0 || s.Bulk[0].Extra != 4 || s.Small[3].Extra != 7 {
		t.Errorf("4 refined rounds: %+v; want only those 4 (4..7)", s)
	}
}

// The samples are kept with the costs, so that a restart refines from where the last
// process stopped; samples that cannot be fitted from are dropped, the costs kept.
func TestCache_KeepsTheSamplesWithTheCosts(t *testing.T) {
	dir, k := t.TempDir(), currentCacheKey()
	c := ProvisionalCosts()
	s := &calSamples{HS: hsSums{Extra: 3, GC: 1, Seg: 2, Reads: 4},
		Bulk: []dataRound{{Extra: 1, Charged: 2, Reads: 3}}, Small: []dataRound{{Extra: 4, Charged: 5, Reads: 6}}, Interrupted: []float64{2e-6}}
	if err := storeCosts(dir, k, c, s); err != nil {
		t.Fatal(err)
	}
	f, err := loadCachedCosts(dir, k)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.Samples, s) || f.Costs.PerRead != c.PerRead {
		t.Errorf("loaded samples %+v, per read %v; want %+v, %v", f.Samples, f.Costs.PerRead, s, c.PerRead)
	}
	s.Small = nil // a bulk round without its small one
	if err := storeCosts(dir, k, c, s); err != nil {
		t.Fatal(err)
	}
	if f, err := loadCachedCosts(dir, k); err != nil || f.Samples != nil || f.Costs == nil {
		t.Errorf("unpaired rounds: samples %+v, err %v; want the costs without samples", f, err)
	}
}

// Refinement waits for an idle process: while something uses the CPU it does not start.
// (Two spinning goroutines, so that the process stays busy on a machine whose other CPU
// is taken too; quiet means under 5% of a CPU in six polls in a row.)
func TestIdleRule_WaitsUntilTheProcessIsQuiet(t *testing.T) {
	rule := idleRule{idleFor: 300 * time.Millisecond, poll: 50 * time.Millisecond, share: 0.05}
	var stop atomic.Bool
	var spinning sync.WaitGroup
	for range 2 {
		spinning.Go(func() {
			deadline := time.Now().Add(10 * time.Second) // bounded, whatever happens below
			for !stop.Load() && time.Now().Before(deadline) {
			}
		})
	}
	busy, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if rule.wait(busy) {
		t.Error("wait returned while two goroutines kept the CPUs busy")
	}
	stop.Store(true)
	spinning.Wait()
	quiet, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	start := time.Now()
	if !rule.wait(quiet) {
		t.Fatal("wait did not return within 10 s of the CPU going quiet")
	}
	t.Logf("idle after %v", time.Since(start))
}

// The machine's busy time (/proc/stat) grows by at least what a goroutine spinning on one
// CPU adds: the idle rule sees another process keeping the machine busy.
func TestMachineCPU_CountsBusyCPUs(t *testing.T) {
	if machineCPU() == 0 {
		t.Skip("no /proc/stat")
	}
	m0, start := machineCPU(), time.Now()
	for time.Since(start) < 300*time.Millisecond {
	}
	if d := time.Duration(machineCPU() - m0); d < 150*time.Millisecond {
		t.Errorf("machine busy time grew by %v while this process spun for 300 ms; want at least 150 ms", d)
	}
}

// Another process keeping a CPU busy (Django on the same box, say) holds refinement back
// as well, although this process is idle.
func TestIdleRule_WaitsWhileAnotherProcessKeepsTheMachineBusy(t *testing.T) {
	if machineCPU() == 0 {
		t.Skip("no /proc/stat")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // bounds the spinner too
	defer cancel()
	spinner := exec.CommandContext(ctx, "sh", "-c", "while :; do :; done")
	if err := spinner.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = spinner.Process.Kill(); _ = spinner.Wait() }()
	rule := idleRule{idleFor: 300 * time.Millisecond, poll: 50 * time.Millisecond, share: 100, machine: 0.5}
	busy, cancelBusy := context.WithTimeout(ctx, time.Second)
	defer cancelBusy()
	if rule.wait(busy) {
		t.Error("wait returned while another process kept a CPU busy")
	}
}

// An idle edge measures more rounds against its client process, applies the costs fitted
// from all of them and keeps them in the cache; the next start continues from them.
func TestRefine_AddsRoundsWhileIdleAndKeepsThem(t *testing.T) {
	if !threadClockWorks() {
		t.Skip("no thread CPU clock")
	}
	dir := t.TempDir()
	a, err := New(Options{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	waitCalibrated(t, a)
	start := a.refine.samples.rounds()
	if start != dataFactorRounds {
		t.Fatalf("start-up calibration: %d rounds; want %d", start, dataFactorRounds)
	}
	a.refine.idle = idleRule{poll: time.Millisecond, share: 100} // idle at once, and between batches
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Refine(ctx) }()
	deadline := time.Now().Add(2 * time.Minute)
	for gaugeValue(t, a.roundsGauge) <= float64(start) {
		if time.Now().After(deadline) {
			t.Fatal("no round added within 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done

	f, err := loadCachedCosts(dir, currentCacheKey())
	if err != nil {
		t.Fatal(err)
	}
	n := f.Samples.rounds()
	if n <= start || n > refineRounds {
		t.Fatalf("cached rounds %d; want more than the start-up's %d", n, start)
	}
	_, dataFactor, perRead, err := f.Samples.fit()
	if err != nil {
		t.Fatal(err)
	}
	if got := a.costs.Load(); got.DataFactor != dataFactor || got.PerRead != perRead || f.Costs.DataFactor != dataFactor {
		t.Errorf("costs in effect: data factor %v, per read %v; cached %v; want the fit of all %d rounds: %v, %v",
			got.DataFactor, got.PerRead, f.Costs.DataFactor, n, dataFactor, perRead)
	}
	t.Logf("%d rounds: data factor %.2f, per read %.2f µs", n, dataFactor, perRead*1e6)

	b, err := New(Options{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.refine.samples.rounds(); got != n || gaugeValue(t, b.roundsGauge) != float64(n) {
		t.Errorf("next start: %d rounds; want the %d kept", got, n)
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// Edges of one build on one machine share the refinement through the cache: one measures
// at a time, and the others take its rounds instead of measuring their own.
func TestRefine_OneEdgeAtATimeAndTheOthersAdoptItsRounds(t *testing.T) {
	dir, k := t.TempDir(), currentCacheKey()
	unlock, ok := lockRefinement(dir)
	if !ok {
		t.Fatal("the first lock was refused")
	}
	if _, ok := lockRefinement(dir); ok {
		t.Error("a second refinement got the lock while the first held it")
	}
	unlock()
	unlock2, ok := lockRefinement(dir)
	if !ok {
		t.Error("the lock was not free after unlock")
	} else {
		unlock2()
	}

	rounds := func(n int) *calSamples {
		s := &calSamples{HS: hsSums{Extra: 2, Seg: 1}}
		for range n {
			s.Bulk, s.Small = append(s.Bulk, dataRound{Extra: 3, Charged: 2, Reads: 1}), append(s.Small, dataRound{Extra: 2, Charged: 1, Reads: 1})
		}
		return s
	}
	c := ProvisionalCosts()
	if err := storeCosts(dir, k, c, rounds(dataFactorRounds)); err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	other := *c
	other.DataFactor, other.PerRead = 1.23, 4.5e-6
	if err := storeCosts(dir, k, &other, rounds(dataFactorRounds+8)); err != nil {
		t.Fatal(err)
	}
	a.adoptCachedRounds()
	if got := a.costs.Load(); got.DataFactor != 1.23 || got.PerRead != 4.5e-6 || a.refine.samples.rounds() != dataFactorRounds+8 {
		t.Errorf("after another edge stored more rounds: data factor %v, per read %v, %d rounds; want its 1.23, 4.5e-06, %d",
			got.DataFactor, got.PerRead, a.refine.samples.rounds(), dataFactorRounds+8)
	}
}
