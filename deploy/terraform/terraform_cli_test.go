//go:build terraform

// The real Terraform is not installable from this project's registries, so
// these checks are opt-in where it is installed with a local copy of the AWS
// provider: go test -tags terraform ./deploy/terraform/
package terraform_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTerraformValidate runs the real Terraform where it and the AWS provider are installed
// locally (Terraform's registry is not reachable here): `terraform fmt -check`, `init`
// from a filesystem mirror and `validate`, which checks every resource and argument against
// the provider's schema. SWITCHBOARD_TERRAFORM_TEST=1 adds the mocked `terraform test`.
func TestTerraformValidate(t *testing.T) {
	t.Parallel()
	tf, err := exec.LookPath("terraform")
	if err != nil {
		t.Skip("terraform is not installed")
	}
	mirror := os.Getenv("SWITCHBOARD_TF_PLUGIN_MIRROR")
	if mirror == "" {
		mirror = "/opt/tf-plugins"
	}
	if _, err := os.Stat(filepath.Join(mirror, "registry.terraform.io", "hashicorp", "aws")); err != nil {
		t.Skipf("no local copy of the hashicorp/aws provider in %s (set SWITCHBOARD_TF_PLUGIN_MIRROR)", mirror)
	}
	// A copy, so that .terraform/ never lands in the work tree; deploy/systemd comes along
	// because the module reads the unit from ../../systemd.
	root := t.TempDir()
	dir := filepath.Join(root, "deploy", "terraform", "aws")
	copyTree(t, modDir, dir)
	copyTree(t, filepath.Dir(serverUnit), filepath.Join(root, "deploy", "systemd"))
	cli := filepath.Join(root, "terraformrc")
	conf := fmt.Sprintf("provider_installation {\n  filesystem_mirror {\n    path    = %q\n    include = [\"registry.terraform.io/hashicorp/*\"]\n  }\n}\n", mirror)
	if err := os.WriteFile(cli, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, tf, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "TF_CLI_CONFIG_FILE="+cli, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "NO_COLOR=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("terraform %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("terraform %s: ok", strings.Join(args, " "))
	}
	run("fmt", "-check", "-recursive", "-diff")
	run("init", "-backend=false", "-input=false", "-no-color")
	run("validate", "-no-color")
	if os.Getenv("SWITCHBOARD_TERRAFORM_TEST") == "1" {
		run("test", "-no-color")
	} else {
		t.Log("SWITCHBOARD_TERRAFORM_TEST=1 also runs `terraform test` (mocked provider, about 15 s)")
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			if d.Name() == ".terraform" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if strings.HasPrefix(d.Name(), "terraform.tfstate") || d.Name() == ".terraform.lock.hcl" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
