package main

import (
	"os"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// A command name with a space and a ')' in it; utime 250, stime 50.
	line := "4242 (kms serve) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 2000000 3000 18446744073709551615\n"
	got, err := parseProcStat([]byte(line))
	if err != nil || got != 3*time.Second {
		t.Fatalf("parseProcStat = %v, %v; want 3s (300 ticks of 10 ms)", got, err)
	}
	for _, bad := range []string{"", "4242 (kms) S 1 2 3", "4242 (kms) S 1 4242 4242 0 -1 4194560 1234 0 0 0 x 50 0"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

// TestProcCPU reads this process's own stat: once getrusage says it has
// used 50 ms, /proc must show at least some of it.
func TestProcCPU(t *testing.T) {
	for x := 0; selfCPU() < 50*time.Millisecond; x++ {
		_ = x * x
	}
	d, err := procCPU(os.Getpid())
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if d <= 0 {
		t.Fatalf("/proc says %v of CPU after getrusage said %v", d, selfCPU())
	}
	if s := sampleCPU(os.Getpid()); !s.daemonOK || s.self <= 0 {
		t.Fatalf("sample %+v: want both times", s)
	}
}
