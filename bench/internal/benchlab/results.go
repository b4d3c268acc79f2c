package benchlab

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
)

// Result is one measured figure, for switchboard and (when there is one) for
// the OpenSSH relay measured in the same run. Samples keep every run so that
// the report can show the median and the spread, not only a best case.
type Result struct {
	// ID is stable across runs and programs ("throughput.up.chacha20"), so
	// the report can place a figure and plot it.
	ID string `json:"id"`
	// Name is what a reader sees ("1 GiB up via ssh -J (chacha20-poly1305)").
	Name string `json:"name"`
	Unit string `json:"unit"` // "MiB/s", "ms", "KiB", "devices/s", "s", "errors"
	// Better is "higher" or "lower".
	Better      string    `json:"better"`
	Switchboard []float64 `json:"switchboard"`
	OpenSSH     []float64 `json:"openssh,omitempty"`
	// X places a point on a curve, e.g. the device count of a memory figure.
	X    float64 `json:"x,omitempty"`
	Note string  `json:"note,omitempty"`
}

// Results is what one benchmark program wrote with -json.
type Results struct {
	Program string   `json:"program"`
	Command string   `json:"command"`
	Results []Result `json:"results"`
}

// Add appends a result.
func (r *Results) Add(res Result) { r.Results = append(r.Results, res) }

// WriteJSON writes r to path; an empty path writes nothing.
func (r *Results) WriteJSON(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// ReadResults reads what WriteJSON wrote.
func ReadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// Median of xs (0 for none); xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Spread is the smallest and largest of xs.
func Spread(xs []float64) (lo, hi float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	return slices.Min(xs), slices.Max(xs)
}
