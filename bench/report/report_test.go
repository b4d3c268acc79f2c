package main

import (
	"flag"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

var update = flag.Bool("update", false, "rewrite testdata/report.md from the fixtures")

// fixture is a full run made of the hand-written results in testdata.
func fixture(t testing.TB) *report {
	t.Helper()
	r := &report{
		Date:    time.Date(2026, 11, 24, 14, 2, 0, 0, time.UTC),
		Command: "go run ./bench/report -switchboard bin/switchboard -out docs/benchmarks.md",
		Machine: machine{CPU: "AMD EPYC 7B13", Cores: 2, Memory: "23.5 GiB", OS: "Debian GNU/Linux 12 (bookworm)",
			Kernel: "Linux 6.1.0-28-amd64", SSH: "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026",
			Go: "go1.26.8", Switchboard: "switchboard v0.6.0"},
		Took:  12*time.Minute + 3*time.Second,
		Plots: map[string]string{"memory": "bench/memory.png", "throughput": "bench/throughput.png"},
	}
	for _, p := range programs(false) {
		rs, err := benchlab.ReadResults(filepath.Join("testdata", p.Name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.ReadFile(filepath.Join("testdata", p.Name+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		r.Runs = append(r.Runs, outcome{Program: p, Results: rs, Output: string(out), Took: 90 * time.Second,
			Command: strings.Join(append([]string{"go run", p.Pkg, "-switchboard bin/switchboard"}, p.Args...), " ")})
	}
	return r
}

// set replaces the switchboard samples (and the relay's, if given) of the
// result id at x (0: the first with that id).
func set(t testing.TB, ix index, id string, x float64, sb []float64, relay ...float64) {
	t.Helper()
	for i := range ix {
		if ix[i].ID == id && (x == 0 || ix[i].X == x) {
			ix[i].Switchboard = sb
			if relay != nil {
				ix[i].OpenSSH = relay
			}
			return
		}
	}
	t.Fatalf("no result %s at %v", id, x)
}

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		r    benchlab.Result
		want float64
		ok   bool
	}{
		{benchlab.Result{Better: "higher", Switchboard: []float64{120, 100, 130}, OpenSSH: []float64{60}}, 2, true},
		{benchlab.Result{Better: "lower", Switchboard: []float64{300}, OpenSSH: []float64{450, 600}}, 1.75, true},
		{benchlab.Result{Better: "lower", Switchboard: []float64{300}}, 0, false},
		{benchlab.Result{Better: "higher", Switchboard: []float64{0}, OpenSSH: []float64{1}}, 0, false},
	} {
		got, ok := ratio(tc.r)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ratio(%v) = %v, %v; want %v, %v", tc.r, got, ok, tc.want, tc.ok)
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{num(122.04), "122"}, {num(58.43), "58.4"}, {num(0.613), "0.61"}, {num(7), "7"}, {num(-45), "-45"},
		{num(7.2), "7.2"}, {num(9.999), "10"}, {num(1095.8), "1,096"}, {num(99.96), "100"}, {num(0), "0"},
		{num(0.0042), "0.0042"}, {count(19000), "19,000"}, {count(1000000), "1,000,000"}, {count(200), "200"},
		{spread([]float64{3, 1, 2}), "2 (1–3)"}, {spread([]float64{62.9}), "62.9"}, {spread(nil), "—"}, {spread([]float64{-45, 41, 53}), "41 (-45 to 53)"},
		{times(0.6123), "0.61×"}, {cell("a|b\n"), `a\|b`},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if v, ok := convert(1500, "ms", "s"); !ok || v != 1.5 {
		t.Errorf("convert(1500 ms) = %v s, %v", v, ok)
	}
	if v, ok := convert(2, "MiB", "KiB"); !ok || v != 2048 {
		t.Errorf("convert(2 MiB) = %v KiB, %v", v, ok)
	}
	if _, ok := convert(2, "MiB", "s"); ok {
		t.Error("converted MiB to s")
	}
}

func TestTargets(t *testing.T) {
	// The fixture's figures meet every target but the two memory ones.
	base := []status{met, met, met, missed, met, missed, met, met, met}
	for _, tc := range []struct {
		name   string
		change func(t testing.TB, ix index) index
		want   map[int]status // targets that differ from base
	}{
		{"fixture", func(t testing.TB, ix index) index { return ix }, nil},
		{"one throughput figure below the relay", func(t testing.TB, ix index) index {
			set(t, ix, "down.w-sink.aes128-gcm", 0, []float64{290}, 300)
			return ix
		}, map[int]status{0: missed}},
		{"aggregate8 below the relay does not count", func(t testing.TB, ix index) index {
			set(t, ix, "aggregate8.aes128-gcm", 0, []float64{100}, 300)
			return ix
		}, nil},
		{"no relay figure", func(t testing.TB, ix index) index {
			set(t, ix, "up.ssh-j.chacha20-poly1305", 0, []float64{100}, []float64{}...)
			return ix
		}, map[int]status{0: notMeasured}},
		{"set-up at 0.8 of the relay", func(t testing.TB, ix index) index {
			set(t, ix, "connect.chacha20-poly1305", 0, []float64{400}, 500)
			return ix
		}, map[int]status{1: missed}},
		{"set-up at exactly 0.7", func(t testing.TB, ix index) index {
			set(t, ix, "connect.aes128-gcm", 0, []float64{350}, 500)
			return ix
		}, nil},
		{"wake 1.6 s more", func(t testing.TB, ix index) index {
			set(t, ix, "wake.extra", 0, []float64{1600, 1500, 1700})
			return ix
		}, map[int]status{2: missed}},
		{"wake in seconds", func(t testing.TB, ix index) index {
			ix[slices.IndexFunc(ix, func(r benchlab.Result) bool { return r.ID == "wake.extra" })].Unit = "s"
			set(t, ix, "wake.extra", 0, []float64{1.2})
			return ix
		}, nil},
		{"no wake figure", func(t testing.TB, ix index) index {
			return slices.DeleteFunc(ix, func(r benchlab.Result) bool { return r.ID == "wake.extra" })
		}, map[int]status{2: notMeasured}},
		{"18 KiB per device", func(t testing.TB, ix index) index {
			set(t, ix, "memory.rss_per_device", 10000, []float64{18})
			set(t, ix, "memory.rss_per_device", 19000, []float64{19.5})
			return ix
		}, map[int]status{3: met, 5: met}},
		{"no 10,000-device point", func(t testing.TB, ix index) index {
			return slices.DeleteFunc(ix, func(r benchlab.Result) bool { return r.X == 10000 && strings.HasPrefix(r.ID, "memory.") })
		}, map[int]status{3: notMeasured}},
		{"18,000 of 19,000 connected", func(t testing.TB, ix index) index {
			set(t, ix, "devices.connected", 19000, []float64{18000})
			return ix
		}, map[int]status{4: missed}},
		{"agent 13 MiB", func(t testing.TB, ix index) index {
			set(t, ix, "agent.idle_rss", 0, []float64{13})
			return ix
		}, map[int]status{6: missed}},
		{"one circuit error", func(t testing.TB, ix index) index {
			set(t, ix, "circuits.errors", 0, []float64{1})
			return ix
		}, map[int]status{7: missed}},
		{"fleet back in 16 s", func(t testing.TB, ix index) index {
			set(t, ix, "fleet.all_back", 0, []float64{16})
			return ix
		}, map[int]status{8: missed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := tc.change(t, fixture(t).index())
			got := targets(ix)
			if len(got) != len(base) {
				t.Fatalf("%d targets, want %d", len(got), len(base))
			}
			for i, tg := range got {
				want := base[i]
				if s, ok := tc.want[i]; ok {
					want = s
				}
				if tg.Status != want {
					t.Errorf("%s: %v (%s), want %v", tg.What, tg.Status, tg.Measured, want)
				}
			}
		})
	}
}

func TestProblems(t *testing.T) {
	r := fixture(t)
	for _, run := range r.Runs {
		if ps := problems(run.Program, run.Results); len(ps) != 0 {
			t.Errorf("fixture %s: %q", run.Program.Name, ps)
		}
	}
	devices, circuits := r.Runs[1], r.Runs[3]
	for _, tc := range []struct {
		name string
		run  outcome
		edit func(ix index) index
		want string
	}{
		{"missing", devices, func(ix index) index {
			return slices.DeleteFunc(ix, func(r benchlab.Result) bool { return r.ID == "memory.stack_per_device" && r.X == 5000 })
		}, "devices: no result memory.stack_per_device at 5,000"},
		{"no samples", devices, func(ix index) index {
			ix[slices.IndexFunc(ix, func(r benchlab.Result) bool { return r.ID == "handshake.rate" })].Switchboard = nil
			return ix
		}, "devices: handshake.rate has no samples"},
		{"too few devices", devices, func(ix index) index {
			set(t, ix, "devices.connected", 10000, []float64{9990})
			return ix
		}, "devices: only 9,990 of 10,000 devices connected"},
		{"circuit errors", circuits, func(ix index) index {
			set(t, ix, "circuits.errors", 0, []float64{3})
			return ix
		}, "circuits: 3 circuit errors"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := *tc.run.Results
			rs.Results = tc.edit(slices.Clone(index(rs.Results)))
			got := problems(tc.run.Program, &rs)
			if !slices.Contains(got, tc.want) {
				t.Errorf("problems = %q, want %q among them", got, tc.want)
			}
		})
	}
	// The smoke sizes expect their own device count.
	smoke := programs(true)[1]
	if !slices.Contains(smoke.Expect, want{ID: "devices.connected", X: 200}) {
		t.Errorf("smoke devices expects %v", smoke.Expect)
	}
}

func TestMarkdown(t *testing.T) {
	r := fixture(t)
	r.Problems = []string{"agent: example problem"}
	got := r.markdown()
	golden := filepath.Join("testdata", "report.md")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("markdown differs from %s (go test ./bench/report -update to accept):\n%s", golden, got)
	}
	for _, s := range []string{
		"Generated by `go run ./bench/report -switchboard bin/switchboard -out docs/benchmarks.md`",
		"[the benchmarks log](benchmarks-log.md)",
		"| server memory per idle device, 10,000 devices | ≤ 20 KiB | 62.9 KiB RSS per device | **missed** |",
		"| agent idle memory | ≤ 12 MiB RSS, no CPU beyond keepalives | 7.2 MiB RSS, CPU 0 % of a core | **met** |",
		"| 10,000 | 10,000 | 627 | 62.9 | 25.1 | 32.1 | 4 |",
		"| ssh -J … true (chacha20-poly1305), ms | 297 (291–348) | 488 (447–532) | 1.64× | 3 |",
		"![Server memory per idle device against the device count](bench/memory.png)",
		"<details><summary><code>go run ./bench/ondemand -switchboard bin/switchboard -runs 10 -agents 10000</code> (1m30s)</summary>",
		"\n````\n", // the output holds ``` itself
		"- agent: example problem",
		"\n- ssh -J … true: Both handshakes, the circuit and the inner session running true.\n",
		"\n- 8 × 1 GiB at once via ssh -W, total (aes128-gcm): all eight transfers",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("markdown lacks %q", s)
		}
	}

	// A failed program leaves its section unmeasured, and its targets too.
	r.Runs[2].Results, r.Runs[2].Err = nil, os.ErrNotExist
	got = r.markdown()
	for _, s := range []string{"_Not measured: `./bench/agent` failed (file does not exist)._", "| no agent.idle_rss | not measured |"} {
		if !strings.Contains(got, s) {
			t.Errorf("markdown without the agent lacks %q", s)
		}
	}
}

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	files, err := plots(fixture(t).index(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("plots = %v, want memory and throughput", files)
	}
	for _, f := range files {
		fh, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(fh)
		fh.Close()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 200 {
			t.Errorf("%s is %v", f, b)
		}
	}
	// No data, no plot.
	if files, err := plots(nil, dir); err != nil || len(files) != 0 {
		t.Errorf("plots(nothing) = %v, %v", files, err)
	}
}
