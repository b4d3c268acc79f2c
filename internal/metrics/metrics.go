// Package metrics exports what the server does as Prometheus metrics: one
// registry per server (no global state), fed through sshd.Observer and the
// board's wake observer. No metric has a per-device or per-key label, so a
// million devices cost nothing here.
package metrics

import (
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchboard-dev/switchboard/internal/sshd"
)

// Metrics holds the server's metrics. Create it with New.
type Metrics struct {
	reg *prometheus.Registry

	devices    prometheus.Gauge
	open       prometheus.Gauge
	circuits   *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	handshakes *prometheus.CounterVec
	denied     *prometheus.CounterVec
	wakes      *prometheus.CounterVec
	wakeTime   prometheus.Histogram
}

var _ sshd.Observer = (*Metrics)(nil)

// New registers the metrics, with the Go runtime's and the process's.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		devices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_devices_connected", Help: "Devices connected over SSH now.",
		}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_circuits_open", Help: "Circuits open now.",
		}),
		circuits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_circuits_total", Help: "Circuits asked for, by result (ok, or why refused).",
		}, []string{"result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_relayed_bytes_total", Help: "Bytes relayed through finished circuits, by direction.",
		}, []string{"direction"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_handshakes_total", Help: "SSH handshakes (with authentication), by result.",
		}, []string{"result"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_auth_denied_total", Help: "Keys refused, by reason.",
		}, []string{"reason"}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_wakes_total", Help: "Wake-ups sent to on-demand devices, by outcome.",
		}, []string{"outcome"}),
		wakeTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_wake_seconds",
			Help:    "Time from a wake-up's request to the device being ready, for answered wake-ups.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.reg.MustRegister(m.devices, m.open, m.circuits, m.bytes, m.handshakes, m.denied, m.wakes, m.wakeTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handshake implements sshd.Observer.
func (m *Metrics) Handshake(ok bool) {
	if ok {
		m.handshakes.WithLabelValues("ok").Inc()
	} else {
		m.handshakes.WithLabelValues("failed").Inc()
	}
}

// AuthDenied implements sshd.Observer.
func (m *Metrics) AuthDenied(code string) { m.denied.WithLabelValues(code).Inc() }

// DeviceOnline implements sshd.Observer.
func (m *Metrics) DeviceOnline(delta int) { m.devices.Add(float64(delta)) }

// CircuitOpened implements sshd.Observer.
func (m *Metrics) CircuitOpened() {
	m.open.Inc()
	m.circuits.WithLabelValues("ok").Inc()
}

// CircuitClosed implements sshd.Observer.
func (m *Metrics) CircuitClosed(toDevice, fromDevice int64) {
	m.open.Dec()
	m.bytes.WithLabelValues("to_device").Add(float64(toDevice))
	m.bytes.WithLabelValues("from_device").Add(float64(fromDevice))
}

// CircuitRefused implements sshd.Observer.
func (m *Metrics) CircuitRefused(kind string) { m.circuits.WithLabelValues(kind).Inc() }

// Wake is the board's wake observer.
func (m *Metrics) Wake(outcome string, took time.Duration) {
	m.wakes.WithLabelValues(outcome).Inc()
	if outcome == "answered" {
		m.wakeTime.Observe(took.Seconds())
	}
}

// Handler serves /metrics, and /debug/pprof/ too if withPprof: profiles
// show keys' fingerprints in no way, but they cost CPU, so they are opt-in.
func (m *Metrics) Handler(withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
