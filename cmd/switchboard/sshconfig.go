package main

import (
	"errors"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/switchboard-dev/switchboard/internal/enroll"
)

func sshConfigCommand(stdout io.Writer) *cobra.Command {
	var c enroll.SSHConfig
	var stateDir string
	cmd := &cobra.Command{
		Use:   "ssh-config",
		Short: "Print an ssh_config block for operators",
		Long: `Print an ssh_config block for operators: a Host entry for the server (the pivot), so that
"ssh -J pivot NAME" reaches device NAME, and with --domain a "Host *.SUFFIX" entry so that
"ssh NAME.SUFFIX" does too. The block's comments say where to put it and how to use it.

The server's address is --server, or else the address recorded in STATE-DIR/public-addr by a
server started with --public-addr. Without --known-hosts, the server's host key (if
STATE-DIR holds it) is printed in a comment, ready for ~/.ssh/known_hosts.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if c.Server == "" {
				s, err := enroll.PublicAddr(stateDir)
				if errors.Is(err, enroll.ErrNoPublicAddr) {
					return errors.New("ssh-config: --server HOST:PORT is needed (the server's address), or start the server once with --public-addr")
				}
				if err != nil {
					return errors.New("ssh-config: " + err.Error())
				}
				c.Server = s
			}
			if err := c.Validate(); err != nil {
				return usageError{err}
			}
			if c.KnownHosts == "" {
				// Only a help for the reader: without it ssh asks to accept the key.
				c.HostKey, _ = enroll.ReadHostKey(filepath.Join(stateDir, enroll.HostKeyFile))
			}
			return c.Write(stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Server, "server", "", "the server's HOST:PORT (default: STATE-DIR/public-addr)")
	f.StringVar(&stateDir, "state-dir", "./switchboard-data", "the server's state directory, for public-addr and the host key")
	f.StringVar(&c.Identity, "identity", "", "IdentityFile: the operator's private key for the server")
	f.StringVar(&c.KnownHosts, "known-hosts", "", "UserKnownHostsFile pinning the server's host key (as written by enroll)")
	f.StringVar(&c.Domain, "domain", "", "the server's --domain: NAME.SUFFIX then goes through the server")
	f.StringVar(&c.Name, "name", enroll.DefaultPivotName, "the Host name to give the server")
	f.StringVar(&c.Ciphers, "ciphers", enroll.PivotCiphers(), `a Ciphers line for the server ("" for ssh's default; the default puts AES-GCM first when this machine has AES instructions)`)
	return cmd
}
