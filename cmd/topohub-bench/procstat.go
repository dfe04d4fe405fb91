package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (the kernel exports
// it to user space as a constant, whatever CONFIG_HZ is).
const clockTicks = 100

// procSample is one reading of a process's memory and CPU time.
type procSample struct {
	at     time.Time
	rssKiB int64
	cpu    time.Duration // utime + stime
}

// readProc samples /proc/<pid>/status (VmRSS) and /proc/<pid>/stat
// (utime, stime).
func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read hub status: %w", err)
	}
	i := bytes.Index(status, []byte("\nVmRSS:"))
	if i < 0 {
		return s, fmt.Errorf("/proc/%d/status has no VmRSS (a zombie?)", pid)
	}
	f := bytes.Fields(status[i+len("\nVmRSS:"):])
	if len(f) < 2 || string(f[1]) != "kB" {
		return s, fmt.Errorf("/proc/%d/status: unreadable VmRSS", pid)
	}
	if s.rssKiB, err = strconv.ParseInt(string(f[0]), 10, 64); err != nil {
		return s, fmt.Errorf("/proc/%d/status VmRSS: %w", pid, err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read hub stat: %w", err)
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// fields are counted after the last ')'. utime and stime are fields
	// 14 and 15, so 12th and 13th after it (state is field 3).
	j := bytes.LastIndexByte(stat, ')')
	if j < 0 {
		return s, fmt.Errorf("/proc/%d/stat: unreadable", pid)
	}
	f = bytes.Fields(stat[j+1:])
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("/proc/%d/stat: unreadable utime/stime", pid)
	}
	s.cpu = time.Duration(ut+st) * time.Second / clockTicks
	return s, nil
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuPct is the CPU used between two samples in percent of one core.
func cpuPct(a, b procSample) float64 {
	wall := b.at.Sub(a.at)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.cpu-a.cpu) / float64(wall)
}

// raiseNoFile lifts the soft limit on open files to the hard limit, since
// every connection is a descriptor. It returns the resulting soft limit.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return rl.Cur, fmt.Errorf("setrlimit: %w", err)
		}
	}
	return rl.Cur, nil
}
