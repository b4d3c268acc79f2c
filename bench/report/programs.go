package main

import (
	"strconv"
	"strings"
)

// program is one benchmark program the report builds, runs and reads.
type program struct {
	Name  string   // "devices"
	Pkg   string   // "./bench/devices"
	Title string   // the heading of its section in the report
	Args  []string // besides -switchboard and -json
	// Expect lists the results the program must write; a smoke run fails
	// without them.
	Expect []want
	// Method says in a paragraph of markdown how its figures are measured.
	Method string
}

// want is one expected result: an ID, at device count X when X is not 0.
type want struct {
	ID string
	X  float64
}

// ciphers are the ciphers ./bench measures, each on every hop.
var ciphers = []string{"chacha20-poly1305", "aes128-gcm"}

// throughputIDs are ./bench's throughput figures, before ".<cipher>", in
// the order they are shown.
var throughputIDs = []string{"up.ssh-j", "down.ssh-j", "up.w-sink", "down.w-sink", "aggregate8"}

// perCount are the results ./bench/devices writes at each device count.
var perCount = []string{
	"memory.rss_per_device", "memory.heap_per_device", "memory.stack_per_device",
	"memory.goroutines_per_device", "memory.rss_total", "devices.connected",
}

// programs returns the benchmark programs in the order they run, with the
// sizes of a full run or, with smoke, of a quick check of the harness.
func programs(smoke bool) []program {
	size := func(full, small string) string {
		if smoke {
			return small
		}
		return full
	}
	counts := size("1000,5000,10000,19000", "200")

	var benchWant []want
	for _, c := range ciphers {
		benchWant = append(benchWant, want{ID: "connect." + c})
		for _, id := range throughputIDs {
			benchWant = append(benchWant, want{ID: id + "." + c})
		}
	}
	var devicesWant []want
	for _, s := range strings.Split(counts, ",") {
		n, _ := strconv.Atoi(s)
		for _, id := range perCount {
			devicesWant = append(devicesWant, want{ID: id, X: float64(n)})
		}
	}
	devicesWant = append(devicesWant, want{ID: "handshake.rate"}, want{ID: "memory.compare"})

	benchArgs := []string{"-runs", "3", "-connects", "20"}
	devicesArgs := []string{"-counts", counts, "-openssh", "1000"}
	if smoke {
		benchArgs = []string{"-size", "64MiB", "-runs", "1", "-connects", "3"}
		devicesArgs = []string{"-counts", counts, "-openssh", "50", "-settle", "1s"}
	}
	return []program{
		{
			Name: "bench", Title: "Switchboard against the OpenSSH relay", Pkg: "./bench", Args: benchArgs, Expect: benchWant,
			Method: "One run starts the device's own target `sshd`, switchboard (`serve --mqtt off`) and the " +
				"OpenSSH relay: a stock `sshd` with `AllowTcpForwarding yes`, on which the device runs " +
				"`ssh -R 127.0.0.1:PORT:localhost:22 relay` and through which the operator runs " +
				"`ssh -J relay -p PORT`. Through switchboard the device runs `ssh -R 22:localhost:22 dev42@sb` " +
				"and the operator `ssh -J sb dev42`. Both paths use the same stock `ssh` client and the same " +
				"target `sshd`, with the named cipher forced on every hop (operator→relay, the inner session, " +
				"device→relay), and the runs alternate between the paths. Figures: the wall time of " +
				"`ssh -J … true` with the device connected; a transfer up through `ssh -J` to " +
				"`cat > /dev/null` on the device and one down from `head -c` (*ssh-j*, the inner session's " +
				"crypto included); the same up to a TCP sink and down from a TCP source the device forwards " +
				"a port to, through `ssh -W`, with no inner session (*w-sink*); and 8 `ssh -W` to 8 devices " +
				"at once (*aggregate8*, total MiB/s). The sizes are in the figures' names. Each transfer is " +
				"timed from its first byte to its end (the handshakes are in the set-up time).",
		},
		{
			Name: "devices", Title: "Server memory per idle device", Pkg: "./bench/devices", Args: devicesArgs, Expect: devicesWant,
			Method: "A real `switchboard serve --mqtt off`; " +
				"load-generator processes (at most 5,000 devices each, each on its own 127.0.0.x source " +
				"address, since a process may hold 20,000 open files here) hold real SSH connections with one " +
				"`tcpip-forward` each and answer keepalives. At each device count, once the server has " +
				"settled, its RSS comes from /proc and its Go heap, goroutine stacks and goroutines from its " +
				"own `/metrics`, each less the empty server's, divided by the devices. The OpenSSH comparison " +
				"holds idle `ssh -R` connections to a stock `sshd` and divides the PSS of the relay's " +
				"per-connection processes by the connections; the handshake rate is devices connected per " +
				"second while the load generators dial in.",
		},
		{
			Name: "agent", Title: "The agent", Pkg: "./bench/agent",
			Args:   []string{"-devices", size("1000,10000", "100"), "-idle", size("30s", "3s")},
			Expect: wants("agent.idle_rss", "agent.idle_cpu", "agent.reconnect", "fleet.all_back", "fleet.p50", "fleet.p99"),
			Method: "The real agent binary, connected and idle (keepalive every 15 s): " +
				"its RSS and CPU time from /proc. Its reconnect time: the server is SIGKILLed and started " +
				"again on the same port; from the new server listening to the device registered. The fleet: " +
				"N agents in one process (real SSH connections, the agent's own backoff with full jitter) " +
				"against a real `switchboard serve`, which is SIGKILLed and restarted; time from the restart " +
				"to every device registered again, and the median and p99 device.",
		},
		{
			Name: "circuits", Title: "Concurrent circuits", Pkg: "./bench/circuits",
			Args:   []string{"-circuits", size("1000", "100")},
			Expect: wants("circuits.errors", "circuits.aggregate", "circuits.p50", "circuits.p99"),
			Method: "A real server; 8 devices (real SSH connections " +
				"with a `tcpip-forward`) answer each circuit with the SHA-256 of what they read; N circuits " +
				"of 1 MiB of random data are opened at once over 8 operator connections and each compares " +
				"the checksum. Errors must be 0; the aggregate is all bytes over the time until the last " +
				"circuit is done.",
		},
		{
			Name: "ondemand", Title: "On-demand devices", Pkg: "./bench/ondemand",
			Args:   []string{"-runs", size("10", "2"), "-agents", size("10000", "100")},
			Expect: wants("wake.connected", "wake.asleep", "wake.extra", "broker.per_agent"),
			Method: "`ssh -J sb dev42 true` alternately to the device " +
				"asleep (the server wakes it over the embedded broker and the real agent binary dials in) and " +
				"at once again while it is still connected, with a real target `sshd`; the extra time of a " +
				"wake is the difference of each pair. The broker's memory: N real mutual-TLS MQTT sessions " +
				"from a separate load-generator process (each with its own certificate, subscribed to its " +
				"wake topic, its state retained) against a real `switchboard serve`; the server's RSS growth " +
				"per agent.",
		},
	}
}

func wants(ids ...string) []want {
	w := make([]want, len(ids))
	for i, id := range ids {
		w[i] = want{ID: id}
	}
	return w
}
