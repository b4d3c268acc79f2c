// Command devices measures the server's memory per idle connected device:
// it starts a real `switchboard serve`, then load-generator processes that
// each hold many device connections (real SSH handshakes, a real
// tcpip-forward each, keepalives answered) from their own 127.0.x.y source
// address, and reads the server's RSS from /proc and its Go heap, stacks and
// goroutines from its /metrics, at each device count. It then holds the
// same kind of connections against a stock OpenSSH sshd used as the relay
// (each asking for a real listening port, as `ssh -R` on a relay does) and
// reads the memory of all its processes.
//
//	go run ./bench/devices -switchboard bin/switchboard [-counts 1000,5000,10000,19000] [-openssh 1000] [-json FILE]
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

// perProcess keeps each load generator well under the 20,000 open files a
// process may have here.
const perProcess = 5000

// genEnv marks a load-generator process (this program started again).
const genEnv = "SWITCHBOARD_BENCH_DEVICES"

type options struct {
	sb       string
	counts   []int
	openssh  int
	settle   time.Duration
	inflight int
	profile  string
	json     string
}

func main() {
	var o options
	counts := flag.String("counts", "1000,5000,10000,19000", "device counts to measure at, ascending")
	flag.StringVar(&o.sb, "switchboard", "bin/switchboard", "switchboard binary")
	flag.IntVar(&o.openssh, "openssh", 1000, "devices to hold against a stock OpenSSH sshd relay for comparison (0: skip)")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "idle time before each memory reading (the GC catches up)")
	flag.IntVar(&o.inflight, "inflight", 32, "SSH handshakes each load generator keeps in flight")
	flag.StringVar(&o.profile, "heap-profile", "", "save the server's heap profile at the largest count to this file")
	flag.StringVar(&o.json, "json", "", "also write the results to this file (benchlab JSON)")
	flag.Parse()
	var err error
	if os.Getenv(genEnv) != "" {
		err = generate()
	} else if o.counts, err = parseCounts(*counts); err == nil {
		err = o.validate()
		if err == nil {
			err = run(o)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/devices:", err)
		os.Exit(1)
	}
}

func parseCounts(list string) ([]int, error) {
	var counts []int
	for s := range strings.SplitSeq(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad count %q in -counts", s)
		}
		if len(counts) > 0 && n <= counts[len(counts)-1] {
			return nil, fmt.Errorf("-counts must be ascending: %d after %d", n, counts[len(counts)-1])
		}
		counts = append(counts, n)
	}
	return counts, nil
}

func (o *options) validate() error {
	switch {
	case o.openssh < 0:
		return fmt.Errorf("-openssh must be ≥ 0")
	case o.inflight <= 0:
		return fmt.Errorf("-inflight must be > 0")
	case o.settle < 0:
		return fmt.Errorf("-settle must be ≥ 0")
	}
	return nil
}

func run(o options) error {
	res := &benchlab.Results{Program: "bench/devices", Command: benchlab.CommandLine("bench/devices")}
	err := measure(o, res)
	if werr := res.WriteJSON(o.json); werr != nil && err == nil {
		err = werr
	}
	return err
}

func measure(o options, res *benchlab.Results) error {
	l, err := benchlab.New("switchboard-devices-bench")
	if err != nil {
		return err
	}
	defer l.Close()
	fleetKey, err := writeFleetKey(l)
	if err != nil {
		return err
	}
	nextSrc := 0 // load generators so far, each with its own source address
	sb, err := switchboardDevices(l, o, fleetKey, &nextSrc, res)
	if err != nil {
		return err
	}
	if o.openssh == 0 {
		return nil
	}
	return opensshDevices(l, o, fleetKey, &nextSrc, sb, res)
}
