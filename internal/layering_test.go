// Package internal_test checks that dependencies between switchboard's
// packages point one way, so that the core never learns about the edges.
package internal_test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/switchboard-dev/switchboard/"

// forbidden lists, for each package, the project packages it must never
// depend on, directly or not.
var forbidden = map[string][]string{
	"internal/policy":  {"internal/board", "internal/circuit", "internal/sshd", "internal/server", "cmd/"},
	"internal/circuit": {"internal/policy", "internal/board", "internal/sshd", "internal/server", "cmd/"},
	"internal/board":   {"internal/policy", "internal/sshd", "internal/server", "cmd/", "golang.org/x/crypto/ssh"},
	"internal/sshd":    {"internal/server", "cmd/"},
	"internal/server":  {"cmd/"},
}

func TestDependenciesPointOneWay(t *testing.T) {
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if strings.HasPrefix(dep, module+b) || strings.HasPrefix(dep, b) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
