package tlscost

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"time"
)

// One start-up's calibration fits the data terms (DataFactor, PerRead) from
// dataFactorRounds rounds of each kind of exchange, and the interrupted-read cost from one
// measurement. From one start-up to the next on the same machine the fit moved more than
// the noise of its rounds explains (data factor 1.64–2.15, per read 0.67–3.3 µs,
// interrupted read 2–10 µs; bench/RESULTS.md): the machine's state changes over seconds
// to minutes (other guests on the host, which CPU the client lands on, what is in the
// caches), and one moment's fit carries that moment. So an edge goes on measuring while
// it is idle, at several moments, and fits from every round it has, until it has
// refineRounds of each kind. The rounds are kept in the calibration cache with the
// costs, so that a restart continues where the last process stopped, and a build that
// has its rounds measures no more.
const (
	// refineRounds is the pool of data rounds of each kind to reach: five start-ups'
	// worth, about eight seconds of CPU in all beyond the start-up's.
	refineRounds = 5 * dataFactorRounds
	// refineBatch rounds are measured in one idle moment before the terms are fitted
	// again, applied and stored.
	refineBatch = 8

	// The process is idle when it has used less than refineIdleShare of one CPU in each
	// of the last refineIdleFor/refinePoll polls. An edge that serves even a request
	// a second is busier than that (health checks alone use a fraction of it).
	refineIdleFor   = 5 * time.Second
	refinePoll      = time.Second
	refineIdleShare = 0.01
	// refineMachineIdle is the most CPU the whole machine may use meanwhile, in CPUs.
	refineMachineIdle = 0.5

	// refineQuietCPU is the most CPU the process may use in a round's pause
	// (dataFactorPause, the refiner itself does nothing then) for the round to count:
	// more means something else ran, and the round is dropped.
	refineQuietCPU = 2 * time.Millisecond
)

// errNoChild: refinement measures against a client process only.
var errNoChild = errors.New("no calibration client process")

// refineState is what Refine needs: where the calibration is kept and the samples its
// costs were fitted from (nil: not calibrated here, nothing to refine).
type refineState struct {
	dir     string
	key     cacheKey
	samples *calSamples
	idle    idleRule
}

// idleRule says when the process is idle: it used less than share of one CPU, and the
// machine as a whole less than machine CPUs' worth, in each of the polls taken every poll
// for idleFor. The machine counts too: rounds measured while another process (Django on
// the same box, a benchmark's other proxy) keeps the CPUs busy are noisy, and they would
// take CPU from it.
type idleRule struct {
	idleFor, poll time.Duration
	share         float64
	machine       float64
}

// defaultIdle is refinement's rule (tests set a shorter one).
var defaultIdle = idleRule{idleFor: refineIdleFor, poll: refinePoll, share: refineIdleShare, machine: refineMachineIdle}

// rounds is the number of data rounds of each kind in s.
func (s *calSamples) rounds() int {
	if s == nil {
		return 0
	}
	return len(s.Bulk)
}

// Refine measures more calibration rounds in the moments the process is idle and fits the
// data terms from all of them, until refineRounds rounds of each kind are pooled
// (edgeproxy_tls_calibration_rounds); after each idle moment's rounds it applies the new
// fit and stores it in the calibration cache. It starts only when the process and the
// machine have been idle (idleRule); a round during which anything else ran in the process
// is dropped, and after two in a row, a handshake, or a busy machine between batches the
// moment ends: refinement never competes with traffic, the edge's or another process's.
// It returns when ctx ends, when the pool is full, or at once for costs given in Options;
// it waits for the start-up calibration first. Run it for as long as the edge runs.
func (a *Accountant) Refine(ctx context.Context) {
	if a == nil {
		return
	}
	select {
	case <-a.Calibrated():
	case <-ctx.Done():
		return
	}
	if !a.refineMu.TryLock() {
		return // another Refine is at work
	}
	defer a.refineMu.Unlock()
	if a.refine.samples == nil {
		return
	}
	cert, err := calibrationCert()
	if err != nil {
		a.log.Info("tlscost: no refinement of the calibration", "err", err.Error())
		return
	}
	for a.refine.samples.rounds() < refineRounds {
		if !a.refine.idle.wait(ctx) {
			return
		}
		if err := a.refineWhileIdle(ctx, cert); err != nil {
			a.log.Info("tlscost: refinement of the calibration stopped", "err", err.Error())
			return
		}
	}
}

// refineWhileIdle measures batches of rounds for as long as the process stays idle (every
// round of the last batch counted, and the machine quiet between batches) and the pool is
// not full, against a client process started afresh every refineBenchLife.
func (a *Accountant) refineWhileIdle(ctx context.Context, cert tls.Certificate) error {
	unlock, ok := lockRefinement(a.refine.dir)
	if !ok {
		return nil // another edge on this machine is at it; its rounds come through the cache
	}
	defer unlock()
	a.adoptCachedRounds()
	for ctx.Err() == nil && a.refine.samples.rounds() < refineRounds {
		idle, err := a.refineFor(ctx, cert, refineBenchLife)
		if err != nil || !idle {
			return err
		}
	}
	return nil
}

// refineBenchLife bounds one client process's life well within its connections' deadline
// (calibrationConnLife): past it, they end with EOF mid-batch.
const refineBenchLife = calibrationConnLife / 2

// refineFor measures batches against one client process for up to life; idle is false
// when the process or the machine stopped being idle.
func (a *Accountant) refineFor(ctx context.Context, cert tls.Certificate, life time.Duration) (idle bool, err error) {
	start := time.Now()
	b, err := newCalBench(cert, a.costs.Load())
	if err != nil {
		return false, err
	}
	defer b.close()
	if b.child == nil {
		return false, errNoChild
	}
	if err := b.openData(); err != nil {
		return false, err
	}
	for ctx.Err() == nil && a.refine.samples.rounds() < refineRounds && time.Since(start) < life {
		idle, err := a.refineBatch(ctx, b, cert)
		if err != nil || !idle {
			return false, err
		}
		// The batch kept the machine busy itself: look again, for one poll, whether
		// anything else does before the next.
		if !a.refine.idle.quietFor(ctx, 1) {
			return false, nil
		}
	}
	return true, nil
}

// wait returns true once the process and the machine have been idle by the rule, false
// when ctx ends first.
func (r idleRule) wait(ctx context.Context) bool {
	return r.quietFor(ctx, int(r.idleFor/r.poll))
}

// quietFor returns true once polls polls in a row found the process and the machine idle,
// false when ctx ends first.
func (r idleRule) quietFor(ctx context.Context, polls int) bool {
	if ctx.Err() != nil {
		return false
	}
	t := time.NewTicker(r.poll)
	defer t.Stop()
	quiet, last, lastMachine := 0, processCPU(), machineCPU()
	for quiet < polls {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		now, machine := processCPU(), machineCPU()
		if float64(now-last) < r.share*float64(r.poll) && (r.machine == 0 || float64(machine-lastMachine) < r.machine*float64(r.poll)) {
			quiet++
		} else {
			quiet = 0
		}
		last, lastMachine = now, machine
	}
	return true
}

// refineBatch measures up to refineBatch rounds of each kind and an interrupted read while
// the process stays idle, then fits, applies and stores the costs with every sample. It
// reports whether the process stayed idle throughout.
func (a *Accountant) refineBatch(ctx context.Context, b *calBench, cert tls.Certificate) (idle bool, err error) {
	cur := a.costs.Load()
	s := a.refine.samples.clone()
	traffic := a.okHandshakes.Load()
	added, disturbed := 0, 0
	for added < refineBatch && disturbed < 2 {
		if ctx.Err() != nil || s.rounds() >= refineRounds {
			break
		}
		bulk, small, err := b.dataRound(s.rounds() + disturbed)
		if err != nil {
			return false, err
		}
		if a.okHandshakes.Load() != traffic {
			break // serving again
		}
		if b.pauseCPU > int64(refineQuietCPU) {
			// Something else ran: a scrape of /metrics or a health check now and
			// then (the round is dropped), or traffic (two rounds in a row).
			disturbed++
			continue
		}
		s.Bulk, s.Small = append(s.Bulk, bulk), append(s.Small, small)
		added, disturbed = added+1, 0
		s.dropStartUp()
	}
	idle = added == refineBatch
	if added == 0 {
		return false, nil
	}
	if ir, err := measureInterruptedRead(cert, cur); err == nil && a.okHandshakes.Load() == traffic {
		s.Interrupted = append(s.Interrupted, ir)
	}
	factor, dataFactor, perRead, err := s.fit()
	if err != nil {
		return false, err
	}
	c := *cur
	c.HandshakeFactor, c.DataFactor, c.PerRead = factor, dataFactor, perRead
	if m, ok := s.medianInterrupted(); ok {
		c.InterruptedRead = m
	}
	a.applyCosts(&c)
	a.refine.samples = s
	a.roundsGauge.Set(float64(s.rounds()))
	where := "none: no cache directory"
	if a.refine.dir != "" {
		where = a.refine.key.path(a.refine.dir)
		if err := storeCosts(a.refine.dir, a.refine.key, &c, s); err != nil {
			where = "none: " + err.Error()
		}
	}
	a.log.Info("tlscost: calibration refined", "rounds", s.rounds(), "added", added, "handshake_factor", c.HandshakeFactor,
		"data_factor", c.DataFactor, "per_read_us", c.PerRead*1e6, "interrupted_read_us", c.InterruptedRead*1e6, "cached_in", where)
	return idle, nil
}

// adoptCachedRounds takes the costs and samples in the cache when another process has
// stored more rounds than this one has (edges of the same build on the same machine).
func (a *Accountant) adoptCachedRounds() {
	if a.refine.dir == "" {
		return
	}
	f, err := loadCachedCosts(a.refine.dir, a.refine.key)
	if err != nil || f.Samples.rounds() <= a.refine.samples.rounds() {
		return
	}
	a.applyCosts(f.Costs)
	a.refine.samples = f.Samples
	a.roundsGauge.Set(float64(f.Samples.rounds()))
	a.log.Info("tlscost: calibration refined elsewhere", "rounds", f.Samples.rounds(), "data_factor", f.Costs.DataFactor, "per_read_us", f.Costs.PerRead*1e6)
}

// clone is a copy of s that appending to does not change s.
func (s *calSamples) clone() *calSamples {
	return &calSamples{HS: s.HS, Bulk: slices.Clone(s.Bulk), Small: slices.Clone(s.Small), StartUp: s.StartUp, Interrupted: slices.Clone(s.Interrupted)}
}

// dropStartUp leaves out the start-up's rounds once refinement has measured as many of its
// own. The start-up measured them while the edge was starting (its listeners opening, its
// first health checks, a load balancer's or a benchmark's first requests, traffic if it
// restarted under load), and they read high or low with it: one start-up fitted a data
// factor of 3.4 that the idle rounds after it put at 2.2.
func (s *calSamples) dropStartUp() {
	if s.StartUp > 0 && len(s.Bulk)-s.StartUp >= s.StartUp {
		s.Bulk, s.Small = slices.Clone(s.Bulk[s.StartUp:]), slices.Clone(s.Small[s.StartUp:])
		s.StartUp = 0
	}
}

// medianInterrupted is the median of the interrupted-read costs measured.
func (s *calSamples) medianInterrupted() (float64, bool) {
	if len(s.Interrupted) == 0 {
		return 0, false
	}
	v := slices.Sorted(slices.Values(s.Interrupted))
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2, true
	}
	return v[len(v)/2], true
}
