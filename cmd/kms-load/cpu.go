package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"
)

// CPU accounting of the timed window. The generator shares the machine
// with the daemon, so what it spends is taken from the daemon; the report
// shows both, so that a reader can see how much the measurement cost.

// window is the timed window: wall time, CPU time and the CPU profile.
type window struct {
	pid        int
	profile    io.Writer
	profiling  bool
	start, end cpuSample
	ended      bool
}

// begin starts the clock. The profiler starts first and stops last, so
// that neither its start nor the writing of the profile is in the window.
func (w *window) begin() error {
	if w.profile != nil {
		if err := pprof.StartCPUProfile(w.profile); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		w.profiling = true
	}
	w.start = sampleCPU(w.pid)
	return nil
}

// finish stops the clock, once.
func (w *window) finish() {
	if w.ended {
		return
	}
	w.ended = true
	w.end = sampleCPU(w.pid)
	if w.profiling {
		pprof.StopCPUProfile()
	}
}

// cpuSample is the CPU time used so far by this process and the daemon.
type cpuSample struct {
	at     time.Time
	self   time.Duration // this process, user + system
	daemon time.Duration // the daemon, user + system; when daemonOK
	// daemonOK is false when no daemon process is known (the daemon runs
	// in this process, in the tests, or elsewhere) or /proc could not be
	// read.
	daemonOK bool
}

// sampleCPU reads the CPU times now. pid is the daemon's process, 0 for
// none.
func sampleCPU(pid int) cpuSample {
	s := cpuSample{at: time.Now(), self: selfCPU()}
	if pid > 0 {
		if d, err := procCPU(pid); err == nil {
			s.daemon, s.daemonOK = d, true
		}
	}
	return s
}

// selfCPU is this process's CPU time: every goroutine, the SMTP sink and
// the garbage collector included.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports (the kernel scales its
// internal HZ to it for user space).
const clockTicks = 100

// procCPU reads a process's CPU time, user + system, from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	d, err := parseProcStat(b)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return d, nil
}

// parseProcStat returns utime + stime of a /proc/PID/stat line: fields 14
// and 15, counted after the command name (field 2), which may hold spaces
// and parentheses and so is skipped up to its last ')'.
func parseProcStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	// After ") " come the state (field 3), ..., utime (14), stime (15).
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields, want at least 15", len(f)+2)
	}
	utime, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("utime %q, stime %q: want numbers of clock ticks", f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}
