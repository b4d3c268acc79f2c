package sshd

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

const helpText = `switchboard commands (run as: ssh -p PORT SERVER COMMAND):
  ls [PATTERN]   list the devices your key may reach (PATTERN: a glob such as 'cam-*')
  ls --json      the same, as JSON for scripts
  status NAME    one device in detail
  help           this text
Reach a device with: ssh -J SERVER NAME   (or -W NAME:PORT, -L, -D, scp -J, sftp -J)
`

// session serves operators' commands. Devices' keys get no session: they
// have nothing to ask the server, and a shell would only widen what a stolen
// device key can probe.
func (c *conn) session(nc ssh.NewChannel) {
	e, err := c.entry(c.srv.cfg.Policy())
	if err != nil || e.Roles&policy.Initiate == 0 {
		nc.Reject(ssh.Prohibited, `switchboard: this key has no operator access (access="initiate"); devices get no session`)
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	pty := false
	for req := range reqs {
		switch req.Type {
		case "pty-req":
			pty = true
			req.Reply(true, nil)
		case "env", "window-change":
			if req.WantReply {
				req.Reply(true, nil)
			}
		case "shell", "exec":
			var cmd execRequest
			if req.Type == "exec" {
				if err := ssh.Unmarshal(req.Payload, &cmd); err != nil {
					req.Reply(false, nil)
					continue
				}
			}
			req.Reply(true, nil)
			var out io.Writer = ch
			if pty {
				// A pty puts the client's terminal in raw mode: lines need CR.
				out = crlfWriter{ch}
			}
			status := c.runCommand(e, cmd.Command, out, ch.Stderr())
			c.opLog.Info("command", "command", clip(cmd.Command), "status", status)
			ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: uint32(status)}))
			ch.CloseWrite()
			ch.Close()
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}

// runCommand runs one session command and returns its exit status.
func (c *conn) runCommand(e *policy.Entry, line string, stdout, stderr io.Writer) int {
	args := strings.Fields(line)
	if len(args) == 0 {
		io.WriteString(stdout, helpText)
		return 0
	}
	switch {
	case args[0] == "help" || args[0] == "--help" || args[0] == "-h":
		io.WriteString(stdout, helpText)
		return 0
	case args[0] == "ls":
		asJSON, pattern, err := lsArgs(args[1:])
		if err != nil {
			fmt.Fprintf(stderr, "switchboard: %v; usage: ls [--json] [PATTERN]\n", err)
			return 2
		}
		rows := c.listing(e, pattern)
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(rows)
			return 0
		}
		c.writeTable(stdout, rows)
		if len(rows) > maxStateQueries {
			fmt.Fprintf(stdout, "(state of on-demand devices shown for the first %d rows: narrow with ls PATTERN)\n", maxStateQueries)
		}
		return 0
	case args[0] == "status" && len(args) == 2:
		return c.status(e, args[1], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "switchboard: unknown command %q; try \"help\"\n", line)
		return 2
	}
}

// deviceRow is one device in `ls` and `ls --json`.
type deviceRow struct {
	Name     string   `json:"name"`
	Aliases  []string `json:"aliases"`
	Ports    []uint32 `json:"ports"`
	State    string   `json:"state"`
	Since    string   `json:"since,omitempty"`
	Remote   string   `json:"remote,omitempty"`
	OnDemand bool     `json:"on_demand,omitempty"`
}

func row(in board.Info) deviceRow {
	r := deviceRow{Name: in.Name, Aliases: in.Aliases, Ports: in.Ports, State: "offline", Remote: in.Remote}
	if r.Aliases == nil {
		r.Aliases = []string{}
	}
	if r.Ports == nil {
		r.Ports = []uint32{}
	}
	if in.Connected {
		r.State = "connected"
	}
	if !in.Since.IsZero() {
		r.Since = in.Since.UTC().Format(time.RFC3339)
	}
	return r
}

// mayList reports whether the operator may reach the device, by any of its
// names, on some port: circuits are checked against the name asked for, so a
// device is listed if any name of it would do. A listing thus reveals no
// more than circuits would.
func mayList(e *policy.Entry, names ...string) bool {
	if len(e.PermitOpen) == 0 {
		return true
	}
	for _, n := range names {
		for _, t := range e.PermitOpen {
			if e.MayReach(n, max(t.Port, 1)) {
				return true
			}
		}
	}
	return false
}

// listing is every device the key may reach: live, seen since the server
// started, and reserved by authorized_keys but never seen.
// lsArgs reads `ls [--json] [PATTERN]`.
func lsArgs(args []string) (asJSON bool, pattern string, err error) {
	for _, a := range args {
		switch {
		case a == "--json":
			asJSON = true
		case strings.HasPrefix(a, "-") || pattern != "":
			return false, "", fmt.Errorf("unexpected %q", clip(a))
		default:
			pattern = strings.ToLower(a)
			if _, err := path.Match(pattern, ""); err != nil {
				return false, "", fmt.Errorf("bad pattern %q", clip(a))
			}
		}
	}
	return asJSON, pattern, nil
}

// maxStateQueries bounds the on-demand states one `ls` fetches: each is a
// short subscription to one device's retained state, and a listing must not
// turn into a query of the whole fleet.
const maxStateQueries = 200

// concurrentStateQueries bounds the subscriptions one listing holds open at
// once.
const concurrentStateQueries = 32

func (c *conn) listing(e *policy.Entry, pattern string) []deviceRow {
	devs := c.srv.cfg.Board.Devices()
	known := map[string]bool{}
	for _, d := range devs {
		known[d.Name] = true
		for _, a := range d.Aliases {
			known[a] = true
		}
	}
	for _, pe := range c.srv.cfg.Policy().Entries() {
		if pe.Hostname != "" && pe.Roles&policy.Listen != 0 && !known[pe.Hostname] {
			known[pe.Hostname] = true
			devs = append(devs, board.Info{Name: pe.Hostname, Aliases: pe.Aliases})
		}
	}
	rows := []deviceRow{}
	for _, d := range devs {
		if pattern != "" {
			if ok, _ := path.Match(pattern, d.Name); !ok {
				continue
			}
		}
		if mayList(e, append([]string{d.Name}, d.Aliases...)...) {
			rows = append(rows, row(d))
		}
	}
	sortRows(rows)
	c.addWakeStates(rows)
	return rows
}

// addWakeStates fills in what on-demand devices among the offline rows last
// said of themselves, for at most maxStateQueries rows, all at once.
func (c *conn) addWakeStates(rows []deviceRow) {
	if ok, _ := c.srv.cfg.Board.CanWake(); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	// Brokers limit subscriptions per connection (AWS IoT Core: 50).
	slots := make(chan struct{}, concurrentStateQueries)
	for i := range rows[:min(len(rows), maxStateQueries)] {
		if rows[i].State == "connected" {
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			if ws, ok, err := c.srv.cfg.Board.WakeState(ctx, rows[i].Name); err == nil && ok {
				rows[i].State = ws.State
				rows[i].Since = ws.Since.UTC().Format(time.RFC3339)
				rows[i].OnDemand = true
			}
		}()
	}
	wg.Wait()
	for i := maxStateQueries; i < len(rows); i++ {
		if rows[i].State != "connected" {
			rows[i].State += "?"
		}
	}
}

func (c *conn) writeTable(w io.Writer, rows []deviceRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tALIASES\tPORTS\tSTATE\tSINCE\tREMOTE")
	for _, r := range rows {
		ports := make([]string, len(r.Ports))
		for i, p := range r.Ports {
			ports[i] = fmt.Sprint(p)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, dash(strings.Join(r.Aliases, ",")),
			dash(strings.Join(ports, ",")), r.State, dash(r.Since), dash(r.Remote))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *conn) status(e *policy.Entry, target string, stdout, stderr io.Writer) int {
	name, err := c.srv.resolve(target)
	info, seen := c.srv.cfg.Board.Lookup(name)
	if err != nil || !mayList(e, append([]string{name, info.Name}, info.Aliases...)...) {
		// Unknown and forbidden read the same, so the command cannot be used
		// to discover names the key may not reach.
		fmt.Fprintf(stderr, "switchboard: no device named %q\n", target)
		return 1
	}
	var ws board.WakeState
	onDemand := false
	if !info.Connected {
		// One device's retained state: a bounded question, whatever the
		// fleet's size.
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		ws, onDemand, _ = c.srv.cfg.Board.WakeState(ctx, name)
		cancel()
	}
	if !seen {
		if owner := c.srv.cfg.Policy().Owner(name); owner != nil {
			info.Aliases = owner.Aliases
		} else if !onDemand {
			fmt.Fprintf(stderr, "switchboard: no device named %q\n", target)
			return 1
		}
	}
	r := row(info)
	if onDemand {
		r.State = ws.State
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", r.Name)
	fmt.Fprintf(tw, "aliases:\t%s\n", dash(strings.Join(r.Aliases, ", ")))
	fmt.Fprintf(tw, "state:\t%s\n", r.State)
	switch {
	case onDemand:
		fmt.Fprintf(tw, "on demand:\t%s since %s (%s ago)%s\n", ws.State, ws.Since.UTC().Format(time.RFC3339),
			ago(c.srv.cfg.Now().Sub(ws.Since)), agentVersion(ws.Agent))
		if seen {
			fmt.Fprintf(tw, "last seen:\t%s (%s ago)\n", r.Since, ago(c.srv.cfg.Now().Sub(info.Since)))
		}
	case info.Connected:
		fmt.Fprintf(tw, "since:\t%s (%s ago)\n", r.Since, ago(c.srv.cfg.Now().Sub(info.Since)))
		fmt.Fprintf(tw, "ports:\t%s\n", strings.TrimPrefix(exposes(info.Ports), "it exposes "))
		fmt.Fprintf(tw, "remote:\t%s\n", r.Remote)
		fmt.Fprintf(tw, "key:\t%s\n", info.Fingerprint)
	case seen:
		fmt.Fprintf(tw, "last seen:\t%s (%s ago)\n", r.Since, ago(c.srv.cfg.Now().Sub(info.Since)))
	default:
		fmt.Fprintf(tw, "last seen:\tnever\n")
	}
	tw.Flush()
	return 0
}

// crlfWriter turns LF into CRLF for a client whose terminal is in raw mode.
type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	if _, err := c.w.Write([]byte(strings.ReplaceAll(string(p), "\n", "\r\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func sortRows(rows []deviceRow) {
	slices.SortFunc(rows, func(a, b deviceRow) int { return cmp.Compare(a.Name, b.Name) })
}

func agentVersion(v string) string {
	if v == "" {
		return ""
	}
	return ", agent " + v
}
