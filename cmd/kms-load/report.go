package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/kmsmail/kms/internal/signrate"
	"github.com/kmsmail/kms/kms/ca"
)

// signaturesPerRenewal is what the daemon signs for one renewal: the new
// certificate (issuing CA key) and the signed reply (KMS key). The user's
// signature is made here, before sending, and verification is cheap.
const signaturesPerRenewal = 2

// signingKeys returns the daemon's own issuing CA and KMS keys when they
// are readable in dataDir/ca (unencrypted, as in a test set-up), else a
// fresh RSA-2048 key, and says which.
func signingKeys(dataDir string) ([]crypto.Signer, string, error) {
	if dataDir != "" {
		fk := &ca.FileKeys{Dir: filepath.Join(dataDir, "ca"), Log: slog.New(slog.DiscardHandler)}
		var keys []crypto.Signer
		for _, name := range []string{"issuer", "kms"} {
			k, err := fk.Signer(name)
			if err != nil {
				keys = nil
				break
			}
			keys = append(keys, k)
		}
		if len(keys) == 2 {
			return keys, "the daemon's issuing CA and KMS keys (" + describe(keys[0]) + ", " + describe(keys[1]) + ")", nil
		}
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, "", err
	}
	return []crypto.Signer{k}, "a fresh RSA-2048 key (the daemon's keys are not readable)", nil
}

func describe(k crypto.Signer) string {
	if r, ok := k.Public().(*rsa.PublicKey); ok {
		return fmt.Sprintf("RSA-%d", r.N.BitLen())
	}
	return fmt.Sprintf("%T", k.Public())
}

func signRate(ctx context.Context, keys []crypto.Signer, workers int, d time.Duration) (float64, error) {
	return signrate.Measure(ctx, keys, workers, d)
}

// report is the result of a run, as printed.
type report struct {
	Renewals    int     `json:"renewals"` // replies received and then verified
	Users       int     `json:"users"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"` // the timed window
	PerSecond   float64 `json:"renewals_per_second"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	// LongestPauseMs is the longest time in the window between two
	// replies: the daemon's pipeline stalling (a lost wake-up left to a
	// poll tick, a commit stuck on the disk) shows there, where uniform
	// slowness does not.
	LongestPauseMs float64 `json:"longest_pause_ms"`
	RepliesVia     string  `json:"replies_via"`
	Verified       string  `json:"verified"`
	// Retries counts SMTP transactions sent again after a failure;
	// Redeliveries, replies received again (same Message-ID and
	// certificate). Both are 0 unless the daemon failed during the run.
	Retries        int     `json:"smtp_retries"`
	Redeliveries   int     `json:"redeliveries"`
	SignKeys       string  `json:"sign_keys"`
	SignWorkers    int     `json:"sign_workers"`
	SignRateBefore float64 `json:"sign_rate_before"`
	SignRateAfter  float64 `json:"sign_rate_after"`
	Bound          float64 `json:"bound_renewals_per_second"`
	Ratio          float64 `json:"ratio"`
	// LoadCPU is what kms-load itself used in the timed window; KMSCPU
	// what the daemon used, when its process is known.
	LoadCPU cpuUse  `json:"kms_load_cpu"`
	KMSCPU  *cpuUse `json:"kms_cpu,omitempty"`
	// SignShare is the part of the daemon's CPU a renewal that its
	// signatures take at the raw signing rate (0 when the daemon's CPU is
	// not known). It is the ratio the daemon would reach with every CPU to
	// itself: the generator's share of the CPUs, and any idle time, are
	// what separate it from Ratio.
	SignShare float64 `json:"daemon_signature_share,omitempty"`
	// OtherMs is the rest of the daemon's CPU a renewal, in milliseconds:
	// everything but the signatures (at the raw rate). It is what a change
	// to the code around the signatures moves, and what a host busy with
	// other tenants inflates most (HACKING.md, "Performance"), so builds
	// are compared by it as much as by Ratio.
	OtherMs    float64 `json:"daemon_other_cpu_ms_per_renewal,omitempty"`
	LoadBefore string  `json:"loadavg_before"`
	LoadAfter  string  `json:"loadavg_after"`
}

// cpuUse is one process's CPU time over the timed window.
type cpuUse struct {
	Seconds      float64 `json:"cpu_seconds"`        // user + system
	Cores        float64 `json:"cores"`              // CPU seconds per second of the window
	MsPerRenewal float64 `json:"cpu_ms_per_renewal"` // CPU milliseconds per renewal
}

// verifiedAfter says what every counted reply passed, after the clock.
const verifiedAfter = "after the timed window: addressed and delivered to the user, KMS signature chaining to the CA roots, a new certificate for the user's address and key"

func newCPUUse(cpu, wall time.Duration, renewals int) cpuUse {
	u := cpuUse{Seconds: cpu.Seconds()}
	if wall > 0 {
		u.Cores = cpu.Seconds() / wall.Seconds()
	}
	if renewals > 0 {
		u.MsPerRenewal = ms(cpu) / float64(renewals)
	}
	return u
}

// percentile is the q-quantile (0..1) of sorted, by the nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// newReport fills a report from a run's outcome and the signing rates
// measured around it.
func newReport(o *outcome, opt options, keys string, workers int, before, after float64) report {
	lat := slices.Clone(o.Latencies)
	slices.Sort(lat)
	r := report{Renewals: o.Renewals, Users: opt.Users, Concurrency: opt.Concurrency, Seconds: o.Elapsed.Seconds(),
		P50ms: ms(percentile(lat, 0.50)), P99ms: ms(percentile(lat, 0.99)), Verified: verifiedAfter,
		SignKeys: keys, SignWorkers: workers, SignRateBefore: before, SignRateAfter: after,
		Retries: o.Retries, Redeliveries: o.Redeliveries}
	r.LongestPauseMs = ms(longestPause(o.Arrivals))
	if o.Elapsed > 0 {
		r.PerSecond = float64(o.Renewals) / o.Elapsed.Seconds()
	}
	// The faster of the two measurements is the bound: something else
	// running at the time (the daemon finishing its start-up, say) can only
	// slow a measurement down, and a bound too low would flatter the ratio.
	r.Bound = max(before, after) / signaturesPerRenewal
	if r.Bound > 0 {
		r.Ratio = r.PerSecond / r.Bound
	}
	start, end := o.CPU.Start, o.CPU.End
	wall := end.at.Sub(start.at)
	r.LoadCPU = newCPUUse(end.self-start.self, wall, o.Renewals)
	if start.daemonOK && end.daemonOK {
		u := newCPUUse(end.daemon-start.daemon, wall, o.Renewals)
		r.KMSCPU = &u
		if r.Bound > 0 && u.MsPerRenewal > 0 {
			r.SignShare = r.signMsPerRenewal() / u.MsPerRenewal
			r.OtherMs = u.MsPerRenewal - r.signMsPerRenewal()
		}
	}
	return r
}

// signMsPerRenewal is the CPU time, in milliseconds, that a renewal's
// signatures take at the faster raw signing rate (measured with
// SignWorkers goroutines, each on a CPU of its own).
func (r report) signMsPerRenewal() float64 {
	return signaturesPerRenewal * float64(r.SignWorkers) * 1000 / (signaturesPerRenewal * r.Bound)
}

// longestPause is the longest time between two consecutive arrivals.
func longestPause(arrivals []time.Time) time.Duration {
	sorted := slices.Clone(arrivals)
	slices.SortFunc(sorted, time.Time.Compare)
	var longest time.Duration
	for i := 1; i < len(sorted); i++ {
		longest = max(longest, sorted[i].Sub(sorted[i-1]))
	}
	return longest
}

// ms is d in milliseconds, fractions kept.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// print writes the report for a person.
func (r report) print(w io.Writer) {
	fmt.Fprintf(w, "renewals:        %d by %d users over %d SMTP connections in %.2fs\n", r.Renewals, r.Users, r.Concurrency, r.Seconds)
	fmt.Fprintf(w, "rate:            %.1f renewals/s\n", r.PerSecond)
	fmt.Fprintf(w, "latency:         p50 %.1f ms, p99 %.1f ms (SMTP 250 to the reply at %s)\n", r.P50ms, r.P99ms, r.RepliesVia)
	fmt.Fprintf(w, "longest pause:   %.1f ms between two replies in the window (a stalled daemon shows here)\n", r.LongestPauseMs)
	fmt.Fprintf(w, "checks:          %d replies verified %s\n", r.Renewals, r.Verified)
	fmt.Fprintf(w, "retries:         %d (SMTP transactions sent again after a failure); redeliveries: %d (replies received again, same Message-ID and certificate)\n",
		r.Retries, r.Redeliveries)
	fmt.Fprintf(w, "raw signing:     %.0f/s before, %.0f/s after, %d goroutines, with %s\n", r.SignRateBefore, r.SignRateAfter, r.SignWorkers, r.SignKeys)
	fmt.Fprintf(w, "bound:           %.1f renewals/s (%d signatures a renewal, at the faster of the two signing rates)\n", r.Bound, signaturesPerRenewal)
	if lo, hi := min(r.SignRateBefore, r.SignRateAfter), max(r.SignRateBefore, r.SignRateAfter); lo < 0.9*hi {
		fmt.Fprintf(w, "warning:         the signing rates before and after differ by %.0f%%: something else was using the CPUs; run again on a quiet machine\n", 100*(1-lo/hi))
	}
	fmt.Fprintf(w, "ratio:           %.1f%% of the bound\n", 100*r.Ratio)
	fmt.Fprintf(w, "CPU, kms-load:   %.2f cores, %.3f ms a renewal (%.2fs in the timed window)\n", r.LoadCPU.Cores, r.LoadCPU.MsPerRenewal, r.LoadCPU.Seconds)
	if r.KMSCPU != nil {
		fmt.Fprintf(w, "CPU, kms:        %.2f cores, %.3f ms a renewal (%.2fs in the timed window)\n", r.KMSCPU.Cores, r.KMSCPU.MsPerRenewal, r.KMSCPU.Seconds)
		if r.SignShare > 0 {
			fmt.Fprintf(w, "signature share: %.1f%% of the daemon's CPU a renewal is its %d signatures (%.3f ms at the raw rate): the ratio it would reach with the CPUs to itself\n",
				100*r.SignShare, signaturesPerRenewal, r.signMsPerRenewal())
			fmt.Fprintf(w, "other work:      %.3f ms of the daemon's CPU a renewal beside its signatures: what the code around them costs\n", r.OtherMs)
		}
	} else {
		fmt.Fprintf(w, "CPU, kms:        not measured (its process is not known: use --spawn or --daemon-pid)\n")
	}
	fmt.Fprintf(w, "load average:    %s before, %s after (%d CPUs)\n", r.LoadBefore, r.LoadAfter, runtime.NumCPU())
}

// loadAverage reads the 1, 5 and 15 minute load averages, or says why not.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
