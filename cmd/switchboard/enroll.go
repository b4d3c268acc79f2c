package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard-dev/switchboard/internal/enroll"
)

// lockWait bounds how long enroll waits for another enroll to finish with authorized_keys.
const lockWait = 30 * time.Second

func enrollCommand(stdout, stderr io.Writer) *cobra.Command {
	var o enroll.Options
	var role, domain string
	cmd := &cobra.Command{
		Use:   "enroll NAME --role device|operator --out DIR",
		Short: "Give a device or operator a key, authorise it, and print the next steps",
		Long: `Run on the server. enroll generates an ed25519 key pair in DIR, adds its line to the
server's authorized_keys (the running server reloads it by itself), and writes DIR/known_hosts
pinning the server's host key for the address devices dial. For a device it also writes
DIR/agent.yaml, with paths as they will be on the device (--device-dir). It then prints what
to do next.

An existing enrolment of NAME is refused; --force rotates it: the old key's line is removed
(a device still connected with it is hung up) and the new one added. Other options on the
removed line (from=, permitopen=, …) are not carried over; a warning names them.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			o.Name, o.Role = args[0], enroll.Role(role)
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			if domain != "" && o.Role != enroll.Operator {
				return usageError{errors.New("--domain is for operators (their ssh_config block)")}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeoutCause(ctx, lockWait, fmt.Errorf("waited %v", lockWait))
			defer cancel()
			res, err := enroll.Run(ctx, o)
			if err != nil {
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintf(stderr, "switchboard: warning: %s\n", w)
			}
			if res.Role == enroll.Device {
				printDeviceSteps(stdout, res)
				return nil
			}
			return printOperatorSteps(stdout, res, domain)
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "device (is reached by name) or operator (reaches devices)")
	f.StringVar(&o.Out, "out", "", "directory for the new key pair and files (created with mode 0700)")
	f.StringVar(&o.StateDir, "state-dir", "./switchboard-data", "the server's state directory")
	f.StringVar(&o.Server, "server", "", "HOST:PORT devices and operators dial (default: the server's --public-addr, from STATE-DIR/public-addr)")
	f.StringVar(&o.AuthorizedKeys, "authorized-keys", "", "authorized_keys file to edit (default STATE-DIR/authorized_keys)")
	f.StringVar(&o.HostKey, "host-key", "", "the server's host key; its .pub is read (default STATE-DIR/"+enroll.HostKeyFile+")")
	f.BoolVar(&o.Force, "force", false, "replace files in DIR and rotate an existing enrolment of NAME")
	f.StringArrayVar(&o.Forwards, "forward", nil, "device: [VPORT:]HOST:PORT the agent exposes; repeatable (default "+enroll.DefaultForward+")")
	f.StringVar(&o.DeviceDir, "device-dir", enroll.DefaultDevDir, "device: where DIR will be copied on the device (the paths in agent.yaml)")
	f.StringVar(&domain, "domain", "", "operator: the server's --domain, for the printed ssh_config block")
	f.BoolVar(&o.OnDemand, "on-demand", false, "device: wait for wake-ups over MQTT; issues its MQTT client certificate from the server's CA")
	f.StringVar(&o.MQTTURL, "mqtt-url", "", "device, on demand: the broker it dials (default mqtts://SERVER-HOST:8883)")
	return cmd
}

// printDeviceSteps tells the user what was done for a device and what to do next.
func printDeviceSteps(w io.Writer, r *enroll.Result) {
	printDone(w, r)
	dev := "root@DEVICE:" + r.DeviceDir + "/"
	unitNote := ""
	if r.DeviceDir != enroll.DefaultDevDir {
		unitNote = ", after changing " + enroll.DefaultDevDir + " in it to " + r.DeviceDir
	}
	fmt.Fprintf(w, `
Next steps:
  1. Copy the directory to the device (it holds the device's private key):
       scp -r %s %s
  2. On the device, run the agent:
       switchboard agent --config %s
     or run it as a service with switchboard-agent.service (see deploy/systemd/README.md)%s:
       systemctl enable --now switchboard-agent
  3. From an operator's machine (see switchboard ssh-config):
       ssh -J pivot root@%s
`, shellQuote(r.Dir+"/."), shellQuote(dev), shellQuote(r.AgentConfig), unitNote, r.Name)
}

// printOperatorSteps tells the user what was done for an operator and prints the operator's
// ssh_config block.
func printOperatorSteps(w io.Writer, r *enroll.Result, domain string) error {
	c := enroll.SSHConfig{
		Server:     r.Server,
		Identity:   filepath.Join(r.Dir, enroll.KeyFile),
		KnownHosts: filepath.Join(r.Dir, enroll.KnownHostsFile),
		Domain:     domain,
		Ciphers:    enroll.PivotCiphers(),
	}
	if err := c.Validate(); err != nil {
		return usageError{err}
	}
	printDone(w, r)
	fmt.Fprintf(w, `
Next steps: give %s the directory %s (it holds their private key) and this block for
their ~/.ssh/config; if the files end up in another directory, change IdentityFile and
UserKnownHostsFile to match.

`, r.Name, r.Dir)
	return c.Write(w)
}

// printDone says which line now authorises the key and which files were written.
func printDone(w io.Writer, r *enroll.Result) {
	verb := "Enrolled"
	if len(r.Replaced) > 0 {
		verb = "Rotated"
	}
	fmt.Fprintf(w, "%s %s %q: key %s is on line %d of %s", verb, r.Role, r.Name, r.Fingerprint, r.Line, r.AuthorizedKeys)
	if len(r.Replaced) > 0 {
		fmt.Fprintf(w, ",\nreplacing line %s; the server reloads the file by itself and hangs up a device still\nconnected with the old key", joinInts(r.Replaced))
	}
	fmt.Fprintln(w, ".")
	fmt.Fprintf(w, "Wrote %s\n", strings.Join(r.Files, ", "))
	fmt.Fprintf(w, "(known_hosts pins the server's host key for %s).\n", r.Server)
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ", ")
}

// shellQuote quotes s for a POSIX shell if it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:@%+=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
