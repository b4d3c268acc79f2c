package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/switchboard-dev/switchboard/bench/internal/benchlab"
)

var (
	switchboardColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	opensshColor     = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	targetColor      = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
)

// plots writes the report's plots into dir and returns their names and
// file names; a plot without data is left out.
func plots(ix index, dir string) (map[string]string, error) {
	out := map[string]string{}
	for name, build := range map[string]func(index) (*plot.Plot, error){
		"memory":     memoryPlot,
		"throughput": throughputPlot,
	} {
		p, err := build(ix)
		if err != nil {
			return nil, fmt.Errorf("%s plot: %w", name, err)
		}
		if p == nil {
			continue
		}
		file := name + ".png"
		if err := p.Save(22*vg.Centimeter, 12*vg.Centimeter, filepath.Join(dir, file)); err != nil {
			return nil, fmt.Errorf("%s plot: %w", name, err)
		}
		out[name] = file
	}
	return out, nil
}

// memoryPlot draws the server's KiB per idle device against the device
// count, with the target and the OpenSSH relay's cost per connection.
func memoryPlot(ix index) (*plot.Plot, error) {
	if len(ix.xs("memory.rss_per_device")) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "Server memory per idle device"
	p.X.Label.Text = "devices connected"
	p.Y.Label.Text = "KiB per device (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	var ticks []plot.Tick
	for _, x := range ix.xs("memory.rss_per_device") {
		ticks = append(ticks, plot.Tick{Value: x, Label: count(x)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	for i, s := range []struct{ id, label string }{
		{"memory.rss_per_device", "switchboard RSS"},
		{"memory.heap_per_device", "switchboard Go heap"},
		{"memory.stack_per_device", "switchboard goroutine stacks"},
	} {
		var xys plotter.XYs
		for _, r := range ix.all(s.id) {
			if r.X == 0 || len(r.Switchboard) == 0 {
				continue
			}
			v, ok := convert(benchlab.Median(r.Switchboard), r.Unit, "KiB")
			if !ok {
				return nil, fmt.Errorf("%s is in %q, not KiB", r.ID, r.Unit)
			}
			if v <= 0 { // not on a log scale
				continue
			}
			xys = append(xys, plotter.XY{X: r.X, Y: v})
		}
		if len(xys) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(sortXYs(xys))
		if err != nil {
			return nil, err
		}
		line.Color = plotutil.Color(i)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(s.label, line, points)
	}
	if r, ok := ix.get("memory.compare"); ok && len(r.OpenSSH) > 0 && r.X > 0 {
		if v, ok := convert(benchlab.Median(r.OpenSSH), r.Unit, "KiB"); ok && v > 0 {
			s, err := plotter.NewScatter(plotter.XYs{{X: r.X, Y: v}})
			if err != nil {
				return nil, err
			}
			s.Color = opensshColor
			s.Shape = draw.BoxGlyph{}
			s.Radius = vg.Points(4)
			p.Add(s)
			p.Legend.Add(fmt.Sprintf("OpenSSH relay, PSS per connection (%s)", count(r.X)), s)
		}
	}
	goal := plotter.NewFunction(func(float64) float64 { return 20 })
	goal.Color = targetColor
	goal.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	goal.Width = vg.Points(1.5)
	p.Add(goal)
	p.Legend.Add("target: 20 KiB per device", goal)
	// Room for the legend above the highest point, on a log scale.
	p.Y.Min = min(p.Y.Min, 20) / 2
	p.Y.Max *= 8
	p.X.Min = 0
	p.X.Max *= 1.05
	return p, nil
}

func sortXYs(xys plotter.XYs) plotter.XYs {
	slices.SortFunc(xys, func(a, b plotter.XY) int { return cmpFloat(a.X, b.X) })
	return xys
}

// throughputPlot draws a pair of bars, switchboard and the OpenSSH relay,
// for each throughput figure of ./bench.
func throughputPlot(ix index) (*plot.Plot, error) {
	var names []string
	var sb, relay plotter.Values
	for _, c := range ciphers {
		for _, id := range throughputIDs {
			r, ok := ix.get(id + "." + c)
			if !ok || len(r.Switchboard) == 0 || len(r.OpenSSH) == 0 {
				continue
			}
			names = append(names, strings.ReplaceAll(id, ".", " ")+"\n"+strings.TrimSuffix(c, "-poly1305"))
			sb = append(sb, benchlab.Median(r.Switchboard))
			relay = append(relay, benchlab.Median(r.OpenSSH))
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "Throughput through the server (median), higher is better"
	p.Y.Label.Text = "MiB/s"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	w := vg.Points(11)
	for i, s := range []struct {
		label string
		vs    plotter.Values
		color color.Color
	}{
		{"switchboard", sb, switchboardColor},
		{"OpenSSH relay", relay, opensshColor},
	} {
		bars, err := plotter.NewBarChart(s.vs, w)
		if err != nil {
			return nil, err
		}
		bars.LineStyle.Width = 0
		bars.Color = s.color
		bars.Offset = w * vg.Length(2*i-1) / 2
		p.Add(bars)
		p.Legend.Add(s.label, bars)
	}
	p.NominalX(names...)
	p.X.Tick.Label.Font.Size = vg.Points(8)
	p.Y.Min = 0
	p.Y.Max *= 1.2
	return p, nil
}
