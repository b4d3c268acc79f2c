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
	"internal/board":   {"internal/policy", "internal/sshd", "internal/server", "cmd/", "golang.org/x/crypto/ssh", "internal/wake", "github.com/eclipse", "github.com/mochi-mqtt", "internal/metrics", "github.com/prometheus"},
	// The SSH front end knows nothing of MQTT either.
	"internal/sshd":   {"internal/server", "cmd/", "internal/wake", "internal/waker", "internal/broker", "internal/mqttc"},
	"internal/server": {"cmd/"},
	// The device side never learns the server's internals.
	"internal/agent": {"internal/board", "internal/policy", "internal/sshd", "internal/server", "internal/enroll", "internal/waker", "internal/broker", "cmd/"},
	// The protocol knows no broker, no library and no server internals.
	"internal/wake":      {"internal/", "cmd/", "github.com/eclipse/paho.golang", "github.com/mochi-mqtt"},
	"internal/keepalive": {"internal/", "cmd/"},
	"internal/enroll":    {"internal/board", "internal/circuit", "internal/sshd", "internal/server", "internal/agent", "cmd/"},
}

func TestDependenciesPointOneWay(t *testing.T) {
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == module+pkg {
				continue // -deps lists the package itself
			}
			for _, b := range bad {
				// Project paths are relative to the module; a path whose first
				// element has a dot (golang.org/x/…) names another module.
				external := strings.Contains(strings.SplitN(b, "/", 2)[0], ".")
				if strings.HasPrefix(dep, module+b) || external && strings.HasPrefix(dep, b) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
