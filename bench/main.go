// Command bench measures switchboard against the natural alternative, a
// plain OpenSSH sshd used as the relay (the device runs `ssh -R` on it, the
// operator `ssh -J` or `ssh -W` through it), in one run on this machine, and
// prints both with their ratio.
//
//	go run ./bench -switchboard bin/switchboard [-runs 3] [-connects 20] [-size 1GiB]
//		[-size-rest 128MiB] [-ciphers chacha20-poly1305@openssh.com,…] [-json FILE]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

func main() {
	c := config{size: 1 << 30, restSize: 128 << 20}
	flag.StringVar(&c.switchboard, "switchboard", "bin/switchboard", "switchboard binary")
	flag.IntVar(&c.runs, "runs", 3, "runs of each throughput measurement, per path")
	flag.IntVar(&c.connects, "connects", 20, "runs of each connect-time measurement, per path")
	flag.Var((*byteSize)(&c.size), "size", "bytes per run of the up-via-ssh -J figure: 1GiB, 64MiB or a number of bytes")
	flag.Var((*byteSize)(&c.restSize), "size-rest", "bytes per run of the other throughput figures (down, -W, aggregate), at most -size")
	ciphers := flag.String("ciphers", "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com",
		"comma-separated ciphers, each measured on every hop")
	flag.StringVar(&c.json, "json", "", "also write the results to this file as JSON")
	flag.Parse()
	c.ciphers = strings.Split(*ciphers, ",")
	c.command = strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " ")
	if err := c.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c)
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case interrupted:
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is the command line, read once.
type config struct {
	switchboard    string
	runs, connects int
	size, restSize int64
	ciphers        []string
	json, command  string
}

func (c *config) validate() error {
	if c.runs < 1 || c.connects < 1 {
		return errors.New("-runs and -connects must be at least 1")
	}
	c.restSize = min(c.restSize, c.size)
	if c.restSize < 1<<20 {
		return errors.New("-size and -size-rest must be at least 1MiB")
	}
	known, err := exec.Command("ssh", "-Q", "cipher").Output()
	if err != nil {
		return fmt.Errorf("ssh -Q cipher: %w", err)
	}
	for i, ci := range c.ciphers {
		c.ciphers[i] = strings.TrimSpace(ci)
		if !slices.Contains(strings.Fields(string(known)), c.ciphers[i]) {
			return fmt.Errorf("-ciphers: this ssh does not know %q (ssh -Q cipher lists those it does)", c.ciphers[i])
		}
	}
	c.switchboard, err = filepath.Abs(c.switchboard)
	return err
}

// byteSize is a flag of bytes written as 1GiB, 64MiB, 512KiB or a number.
type byteSize int64

func (s *byteSize) String() string { return human(int64(*s)) }

func (s *byteSize) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

func parseSize(v string) (int64, error) {
	t := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("%q is not a size like 1GiB, 64MiB or 4096", v)
	}
	return n * mult, nil
}

// A figure is one measurement made on both routes; run returns one sample.
type figure struct {
	id, name, unit string
	higher         bool // higher is better
	runs           int
	note           string
	run            func(ctx context.Context, r route) (float64, error)
}

// figures lists what is measured with one cipher, in order. cfg is the ssh
// config for that cipher.
//
// A throughput run is timed from when the first byte moves (ssh takes it
// from stdin; the source starts sending; without a source, it reaches the
// operator's stdout) until ssh has exited and, going up, the sink has seen
// EOF: the handshakes are left out, the connect figure has them.
func figures(c config, b *bed, cipher, cfg string) []figure {
	s := short(cipher)
	size, rest := c.size, c.restSize
	per := rest / aggDevices
	const timed = " Timed from the first byte moving to the end; the handshakes are in connect."
	return []figure{{
		id: "connect." + s, name: fmt.Sprintf("ssh -J … true (%s)", s), unit: "ms", runs: c.connects,
		note: "Wall time of the whole command: both handshakes, the circuit, and the inner session running true.",
		run: func(ctx context.Context, r route) (float64, error) {
			run, err := runSSH(ctx, cfg, nil, append(r.jump, "true")...)
			return ms(run.end.Sub(run.start)), err
		},
	}, {
		id: "up.ssh-j." + s, name: fmt.Sprintf("%s up via ssh -J (%s)", human(size), s), unit: "MiB/s", higher: true,
		runs: c.runs, note: "The operator's stdin to cat > /dev/null on the device, through an inner SSH session." + timed,
		run: func(ctx context.Context, r route) (float64, error) {
			run, err := runSSH(ctx, cfg, &zeros{left: size}, append(r.jump, "cat > /dev/null")...)
			if err != nil {
				return 0, err
			}
			return rate(size, run.end.Sub(run.fed)), nil
		},
	}, {
		id: "down.ssh-j." + s, name: fmt.Sprintf("%s down via ssh -J (%s)", human(rest), s), unit: "MiB/s", higher: true,
		runs: c.runs, note: "head -c … /dev/zero on the device to the operator's stdout, through an inner SSH session." + timed,
		run: func(ctx context.Context, r route) (float64, error) {
			run, err := runSSH(ctx, cfg, nil, append(r.jump, fmt.Sprintf("head -c %d /dev/zero", rest))...)
			if err != nil {
				return 0, err
			}
			if run.out != rest {
				return 0, fmt.Errorf("received %d bytes of %d", run.out, rest)
			}
			return rate(rest, run.end.Sub(run.got)), nil
		},
	}, {
		id: "up.w-sink." + s, name: fmt.Sprintf("%s up via ssh -W to a sink (%s)", human(rest), s), unit: "MiB/s", higher: true,
		runs: c.runs, note: "The operator's stdin to a TCP sink the device forwards a port to; no inner SSH session." + timed,
		run: func(ctx context.Context, r route) (float64, error) {
			run, err := runSSH(ctx, cfg, &zeros{left: rest}, "-W", r.sink, r.via)
			if err != nil {
				return 0, err
			}
			got, err := b.sink.wait(ctx, 1)
			if err != nil {
				return 0, err
			}
			if got[0].n != rest {
				return 0, fmt.Errorf("sink received %d bytes of %d", got[0].n, rest)
			}
			return rate(rest, later(run.end, got[0].last).Sub(run.fed)), nil
		},
	}, {
		id: "down.w-sink." + s, name: fmt.Sprintf("%s down via ssh -W from a source (%s)", human(rest), s), unit: "MiB/s", higher: true,
		runs: c.runs, note: "A TCP source the device forwards a port to, to the operator's stdout; no inner SSH session." + timed,
		run: func(ctx context.Context, r route) (float64, error) {
			b.source.send.Store(rest)
			run, err := runSSH(ctx, cfg, nil, "-W", r.source, r.via)
			if err != nil {
				return 0, err
			}
			sent, err := b.source.wait(ctx, 1)
			if err != nil {
				return 0, err
			}
			if run.out != rest {
				return 0, fmt.Errorf("received %d bytes of %d", run.out, rest)
			}
			return rate(rest, run.end.Sub(sent[0].first)), nil
		},
	}, {
		id: "aggregate8." + s, unit: "MiB/s", higher: true, runs: c.runs,
		name: fmt.Sprintf("%d circuits at once to %d devices, aggregate, %s up (%s)", aggDevices, aggDevices, human(per*aggDevices), s),
		note: fmt.Sprintf("%d concurrent ssh -W, each sending %s to the sink through its own device: held after their first bytes until all 8 are open; all the bytes over the time from then to the last circuit's end.", aggDevices, human(per)),
		run: func(ctx context.Context, r route) (float64, error) {
			// The handshakes end at different times: hold each circuit after
			// its first bytes until all are open, and time from there.
			all := newBarrier(aggDevices)
			runs := make([]sshRun, aggDevices)
			errs := make([]error, aggDevices)
			var wg sync.WaitGroup
			for i := range aggDevices {
				wg.Go(func() {
					var once sync.Once
					in := &zeros{left: per, gate: func() { once.Do(all.arrive); <-all.open }}
					runs[i], errs[i] = runSSH(ctx, cfg, in, "-W", r.agg[i], r.via)
					once.Do(all.arrive)
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				return 0, err
			}
			got, err := b.sink.wait(ctx, aggDevices)
			if err != nil {
				return 0, err
			}
			end := all.opened
			for i := range aggDevices {
				if got[i].n != per {
					return 0, fmt.Errorf("sink received %d bytes of %d on one circuit", got[i].n, per)
				}
				end = later(end, runs[i].end, got[i].last)
			}
			return rate(per*aggDevices, end.Sub(all.opened)), nil
		},
	}}
}

func run(ctx context.Context, c config) error {
	l, err := benchlab.New("switchboard-bench")
	if err != nil {
		return err
	}
	defer l.Close()
	b, err := setup(l, c.switchboard)
	if err != nil {
		return err
	}
	defer b.close()
	routes := b.routes()

	width := len("measurement")
	for _, ci := range c.ciphers {
		for _, f := range figures(c, b, ci, "") {
			width = max(width, len([]rune(f.name)))
		}
	}
	sshVersion, _ := exec.Command("ssh", "-V").CombinedOutput()
	fmt.Printf("machine: %d cores; %s", runtime.NumCPU(), sshVersion)
	fmt.Printf("every hop uses the named cipher (operator→relay, inner session, device→relay); runs alternate between the paths\n\n")
	fmt.Printf("%-*s %16s %16s %7s\n", width, "measurement", routes[0].name, routes[1].name, "ratio")

	results := benchlab.Results{Program: "bench", Command: c.command}
	for _, cipher := range c.ciphers {
		if err := ctx.Err(); err != nil {
			return err
		}
		cfg, err := b.sshConfig(cipher)
		if err != nil {
			return err
		}
		ups, err := b.dial(ctx, cfg)
		if err == nil {
			for _, f := range figures(c, b, cipher, cfg) {
				var res benchlab.Result
				if res, err = measure(ctx, f, routes); err != nil {
					break
				}
				results.Add(res)
				row(width, res)
			}
		}
		for _, u := range ups {
			benchlab.Stop(u.cmd)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", short(cipher), err)
		}
	}
	return results.WriteJSON(c.json)
}

// measure runs f f.runs times on each route, alternating between them so
// that a noisy moment on the machine falls on both.
func measure(ctx context.Context, f figure, routes []route) (benchlab.Result, error) {
	res := benchlab.Result{ID: f.id, Name: f.name, Unit: f.unit, Better: "lower", Note: f.note}
	if f.higher {
		res.Better = "higher"
	}
	samples := []*[]float64{&res.Switchboard, &res.OpenSSH}
	for i := range f.runs {
		for j, r := range routes {
			x, err := f.run(ctx, r)
			if err != nil {
				return res, fmt.Errorf("%s via %s, run %d of %d: %w", f.id, r.name, i+1, f.runs, err)
			}
			*samples[j] = append(*samples[j], math.Round(x*1e3)/1e3)
		}
	}
	return res, nil
}

// row prints both medians with their spread and switchboard's advantage: the
// ratio is turned so that > 1 always means switchboard wins.
func row(width int, r benchlab.Result) {
	sb, relay := benchlab.Median(r.Switchboard), benchlab.Median(r.OpenSSH)
	ratio := sb / relay
	if r.Better == "lower" {
		ratio = relay / sb
	}
	sbLo, sbHi := benchlab.Spread(r.Switchboard)
	relayLo, relayHi := benchlab.Spread(r.OpenSSH)
	pad := width - len([]rune(r.Name))
	fmt.Printf("%s%s %16s %16s %6.2fx  (%s is better; min–max %.1f–%.1f / %.1f–%.1f)\n", r.Name, strings.Repeat(" ", pad),
		fmt.Sprintf("%.1f %s", sb, r.Unit), fmt.Sprintf("%.1f %s", relay, r.Unit), ratio, r.Better,
		sbLo, sbHi, relayLo, relayHi)
}

func later(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// rate is n bytes over d in MiB/s.
func rate(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

func short(cipher string) string { return strings.TrimSuffix(cipher, "@openssh.com") }

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
