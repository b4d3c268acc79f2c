// Command report runs every benchmark program, one after the other, and
// writes docs/benchmarks.md from their results: the machine, how each figure
// is measured, the project's targets met or missed, tables and plots.
//
//	go run ./bench/report -switchboard bin/switchboard [-out docs/benchmarks.md]
//	go run ./bench/report -switchboard bin/switchboard -smoke
//
// -smoke runs every program at tiny sizes, writes the report to a temporary
// directory (unless -out is given) and fails if a program fails, an expected
// figure is missing, a circuit fails its checksum or fewer devices connect
// than asked for: it checks the harness, not the targets. A full run fails
// on the same problems, after writing the report with them listed.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

// config is what the command line asks for.
type config struct {
	Switchboard string // the binary, as given
	Smoke       bool
	Out         string        // the markdown file; "" for the default
	Only        []string      // run only these programs; nil for all
	Timeout     time.Duration // per program
}

func main() {
	var c config
	var only string
	flag.StringVar(&c.Switchboard, "switchboard", "bin/switchboard", "switchboard binary to measure")
	flag.BoolVar(&c.Smoke, "smoke", false, "tiny sizes, to check the harness; fail on a missing figure or an error")
	flag.StringVar(&c.Out, "out", "", "markdown file to write (default docs/benchmarks.md; with -smoke, a temporary directory)")
	flag.StringVar(&only, "only", "", "comma-separated programs to run (bench,devices,agent,circuits,ondemand); default all")
	flag.DurationVar(&c.Timeout, "timeout", 0, "time limit of each program (default 5m with -smoke, 30m without)")
	flag.Parse()
	if only != "" {
		c.Only = strings.Split(only, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/report:", err)
	}
	stop()
	os.Exit(code)
}

// command is the report's own command line, as a reader would retype it.
func (c config) command() string {
	s := "go run ./bench/report -switchboard " + c.Switchboard
	if c.Smoke {
		s += " -smoke"
	}
	if c.Out != "" {
		s += " -out " + c.Out
	}
	if c.Only != nil {
		s += " -only " + strings.Join(c.Only, ",")
	}
	return s
}

// run builds and runs the programs, writes the report and returns the exit
// code: 1 if anything failed.
func run(ctx context.Context, c config) (int, error) {
	start := time.Now()
	sb, err := filepath.Abs(c.Switchboard)
	if err != nil {
		return 2, err
	}
	if fi, err := os.Stat(sb); err != nil || fi.IsDir() {
		return 2, fmt.Errorf("no switchboard binary at %s (make build)", c.Switchboard)
	}
	progs := programs(c.Smoke)
	if c.Only != nil {
		progs = slices.DeleteFunc(progs, func(p program) bool { return !slices.Contains(c.Only, p.Name) })
		if len(progs) != len(c.Only) {
			return 2, fmt.Errorf("-only %s: the programs are bench, devices, agent, circuits and ondemand", strings.Join(c.Only, ","))
		}
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Minute
		if c.Smoke {
			timeout = 5 * time.Minute
		}
	}

	// A smoke run keeps its work (binaries aside) beside its report.
	work, err := os.MkdirTemp("", "switchboard-report-")
	if err != nil {
		return 1, err
	}
	out := c.Out
	switch {
	case out == "" && c.Smoke:
		out = filepath.Join(work, "benchmarks.md")
	case out == "":
		out = "docs/benchmarks.md"
		defer os.RemoveAll(work)
	default:
		defer os.RemoveAll(work)
	}
	bin := filepath.Join(work, "bin")
	defer os.RemoveAll(bin)

	r := &report{Date: start, Command: c.command(), Smoke: c.Smoke, Machine: describe(sb)}
	fmt.Printf("bench/report: %s (%s, %d cores)\n", r.Machine.Switchboard, r.Machine.CPU, r.Machine.Cores)

	// Build everything first: a program that does not compile fails the run
	// before the long measurements start.
	built := map[string]error{}
	for _, p := range progs {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, p.Name), p.Pkg)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			built[p.Name] = fmt.Errorf("go build %s: %w", p.Pkg, err)
		}
	}

	for _, p := range progs {
		rn := outcome{Program: p, Command: strings.Join(append([]string{"go run", p.Pkg, "-switchboard", c.Switchboard}, p.Args...), " ")}
		if err := built[p.Name]; err != nil {
			rn.Err = err
		} else if ctx.Err() != nil {
			rn.Err = ctx.Err()
		} else {
			rn = runProgram(ctx, rn, filepath.Join(bin, p.Name), sb, filepath.Join(work, p.Name+".json"), timeout)
		}
		if rn.Err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %v", p.Name, rn.Err))
		} else {
			r.Problems = append(r.Problems, problems(p, rn.Results)...)
		}
		r.Runs = append(r.Runs, rn)
	}

	if ctx.Err() != nil {
		return 130, errors.New("interrupted: no report written")
	}

	plotDir := filepath.Join(filepath.Dir(out), "bench")
	if err := os.MkdirAll(plotDir, 0o755); err != nil {
		return 1, err
	}
	files, err := plots(r.index(), plotDir)
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	r.Plots = map[string]string{}
	for name, f := range files {
		r.Plots[name] = "bench/" + f
	}
	r.Took = time.Since(start)
	if err := os.WriteFile(out, []byte(r.markdown()), 0o644); err != nil {
		return 1, err
	}

	fmt.Printf("\n==> targets%s\n", map[bool]string{true: " (smoke sizes: not the targets' verdicts)"}[c.Smoke])
	for _, t := range targets(r.index()) {
		fmt.Printf("  %-13s %s: %s\n", strings.Trim(t.Status.String(), "*"), t.What, t.Measured)
	}
	fmt.Printf("\nwrote %s and its plots in %s (%s)\n", out, plotDir, duration(r.Took))
	if len(r.Problems) > 0 {
		return 1, fmt.Errorf("%d problems:\n  %s", len(r.Problems), strings.Join(r.Problems, "\n  "))
	}
	return 0, nil
}

// runProgram runs one built program alone, its output streamed to the
// terminal and kept, and reads the results it wrote.
func runProgram(ctx context.Context, rn outcome, bin, sb, jsonPath string, timeout time.Duration) outcome {
	args := append([]string{"-switchboard", sb}, rn.Program.Args...)
	args = append(args, "-json", jsonPath)
	fmt.Printf("\n==> %s\n", rn.Command)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = io.MultiWriter(os.Stdout, &stdout)
	cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
	// Interrupt first, so that the program can end what it started.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	rn.Took, rn.Output = time.Since(start), stdout.String()
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("still running after %v", timeout)
		}
		if last := lastLine(stderr.String()); last != "" {
			err = fmt.Errorf("%w: %s", err, last)
		}
		rn.Err = err
		return rn
	}
	rs, err := benchlab.ReadResults(jsonPath)
	if err != nil {
		rn.Err = fmt.Errorf("no results: %w", err)
		return rn
	}
	rn.Results = rs
	return rn
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
