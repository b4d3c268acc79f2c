package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// describe reads this machine's CPU, memory, kernel, OpenSSH and Go
// versions and the switchboard binary's version.
func describe(sb string) machine {
	m := machine{
		CPU:    procField("/proc/cpuinfo", "model name"),
		Cores:  runtime.NumCPU(),
		OS:     strings.Trim(osRelease("PRETTY_NAME"), `"`),
		Kernel: "Linux " + strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		Go:     runtime.Version(),
	}
	if m.CPU == "" {
		m.CPU = "unknown (" + runtime.GOARCH + ")"
	}
	if kb, err := strconv.Atoi(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB")); err == nil {
		m.Memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		m.SSH = strings.TrimSpace(string(out))
	} else {
		m.SSH = "ssh -V failed: " + err.Error()
	}
	if out, err := exec.Command(sb, "version").Output(); err == nil {
		m.Switchboard = strings.TrimSpace(string(out))
	} else {
		m.Switchboard = sb + " version failed: " + err.Error()
	}
	return m
}

// procField returns the value of the first "key: value" line with this key.
func procField(path, key string) string {
	sc := bufio.NewScanner(strings.NewReader(readFile(path)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func osRelease(key string) string {
	for line := range strings.SplitSeq(readFile("/etc/os-release"), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	return ""
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
