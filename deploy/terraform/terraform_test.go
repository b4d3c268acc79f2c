// Package terraform_test checks the Terraform module in aws/ as far as that can be done
// without Terraform or AWS: syntax and formatting, references, variables, templates, the
// rendered user data (bash -n, shellcheck), the IoT policies against docs/aws-iot.md, the
// agent.yaml output against what `switchboard enroll` writes, and the server's flags
// against the CLI. Where terraform and a local copy of the AWS provider are installed it
// also runs `terraform validate` (and, with SWITCHBOARD_TERRAFORM_TEST=1, the mocked
// `terraform test` suite in aws/tests, which takes about 15 s).
package terraform_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	"github.com/switchboard-dev/switchboard/internal/agent"
	"github.com/switchboard-dev/switchboard/internal/enroll"
	"github.com/switchboard-dev/switchboard/internal/hostkey"
)

const (
	modDir       = "aws"                                                              // the module, relative to this file
	userDataTmpl = "user_data.sh.tftpl"                                               // its user-data template
	serverUnit   = "../systemd/switchboard-server.service"                            // the unit the user data installs
	awsIoTDoc    = "../../docs/aws-iot.md"                                            // the policies' reference
	serveFlags   = "../../cmd/switchboard/serve.go"                                   // where serve's flags are declared
	userDataMax  = 16384                                                              // EC2's limit on user data, in bytes
	amazonCA1SHA = "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e" // Amazon Root CA 1
)

// module is the parsed aws/ directory.
type module struct {
	files     map[string][]byte // file name → source, for the *.tf files
	bodies    map[string]*hclsyntax.Body
	variables map[string]*hclsyntax.Block
	locals    map[string]*hclsyntax.Attribute
	resources map[string]*hclsyntax.Block // TYPE.NAME
	data      map[string]*hclsyntax.Block // TYPE.NAME
	outputs   map[string]*hclsyntax.Block
}

func loadModule(t *testing.T) *module {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(modDir, "*.tf"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no .tf files in %s (%v)", modDir, err)
	}
	m := &module{
		files: map[string][]byte{}, bodies: map[string]*hclsyntax.Body{},
		variables: map[string]*hclsyntax.Block{}, locals: map[string]*hclsyntax.Attribute{},
		resources: map[string]*hclsyntax.Block{}, data: map[string]*hclsyntax.Block{},
		outputs: map[string]*hclsyntax.Block{},
	}
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, diags := hclsyntax.ParseConfig(src, p, hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s does not parse: %s", p, diags)
		}
		body := f.Body.(*hclsyntax.Body)
		m.files[p], m.bodies[p] = src, body
		if len(body.Attributes) > 0 {
			t.Errorf("%s: top-level attributes are not Terraform", p)
		}
		for _, b := range body.Blocks {
			declare := func(into map[string]*hclsyntax.Block, key string) {
				if _, dup := into[key]; dup {
					t.Errorf("%s: %s %s declared twice", p, b.Type, key)
				}
				into[key] = b
			}
			switch b.Type {
			case "variable":
				declare(m.variables, b.Labels[0])
			case "output":
				declare(m.outputs, b.Labels[0])
			case "resource":
				declare(m.resources, b.Labels[0]+"."+b.Labels[1])
			case "data":
				declare(m.data, b.Labels[0]+"."+b.Labels[1])
			case "locals":
				for name, a := range b.Body.Attributes {
					if _, dup := m.locals[name]; dup {
						t.Errorf("%s: local.%s declared twice", p, name)
					}
					m.locals[name] = a
				}
			case "terraform", "provider":
			default:
				t.Errorf("%s: unexpected top-level block %q", p, b.Type)
			}
		}
	}
	return m
}

// walkAttrs calls f for every attribute of body and of its nested blocks; parents are the
// types of the nested blocks around the attribute.
func walkAttrs(body *hclsyntax.Body, parents []string, f func(a *hclsyntax.Attribute, parents []string)) {
	names := make([]string, 0, len(body.Attributes))
	for n := range body.Attributes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f(body.Attributes[n], parents)
	}
	for _, b := range body.Blocks {
		walkAttrs(b.Body, append(parents[:len(parents):len(parents)], b.Type), f)
	}
}

// literalString returns the value of an expression that must be a constant string.
func literalString(t *testing.T, what string, expr hclsyntax.Expression) string {
	t.Helper()
	v, diags := expr.Value(nil)
	if diags.HasErrors() || v.IsNull() || !v.IsKnown() || v.Type() != cty.String {
		t.Errorf("%s must be a literal string (%s)", what, diags)
		return ""
	}
	return v.AsString()
}

func TestFilesParseAndAreFormatted(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(modDir, "*.tf"))
	more, _ := filepath.Glob(filepath.Join(modDir, "tests", "*.tftest.hcl"))
	paths = append(append(paths, more...), filepath.Join(modDir, "terraform.tfvars.example"))
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, diags := hclsyntax.ParseConfig(src, p, hcl.InitialPos); diags.HasErrors() {
			t.Errorf("%s: %s", p, diags)
			continue
		}
		if got := hclwrite.Format(src); !bytes.Equal(got, src) {
			t.Errorf("%s is not `terraform fmt`-clean; formatted it reads:\n%s", p, got)
		}
	}
}

func TestReferencesResolve(t *testing.T) {
	m := loadModule(t)
	usedVars, usedLocals := map[string]bool{}, map[string]bool{}
	for p, body := range m.bodies {
		for _, top := range body.Blocks {
			where := fmt.Sprintf("%s: %s %s", p, top.Type, strings.Join(top.Labels, "."))
			_, counted := top.Body.Attributes["count"]
			_, forEach := top.Body.Attributes["for_each"]
			walkAttrs(top.Body, nil, func(a *hclsyntax.Attribute, parents []string) {
				if len(parents) > 0 && parents[len(parents)-1] == "lifecycle" && a.Name == "ignore_changes" {
					return // attribute names of this resource, not references
				}
				if top.Type == "variable" && len(parents) == 0 && a.Name == "type" {
					return // a type constraint, not references
				}
				for _, tr := range hclsyntax.Variables(a.Expr) {
					checkTraversal(t, m, where+"."+a.Name, tr, counted, forEach, usedVars, usedLocals)
				}
			})
		}
	}
	for name := range m.variables {
		if !usedVars[name] {
			t.Errorf("variable %q is declared but never used", name)
		}
	}
	for name := range m.locals {
		if !usedLocals[name] {
			t.Errorf("local %q is declared but never used", name)
		}
	}
}

// checkTraversal reports a reference to something the module does not declare.
func checkTraversal(t *testing.T, m *module, where string, tr hcl.Traversal, counted, forEach bool, usedVars, usedLocals map[string]bool) {
	t.Helper()
	ref := traversalString(tr)
	attr := func(i int) string {
		if i < len(tr) {
			if a, ok := tr[i].(hcl.TraverseAttr); ok {
				return a.Name
			}
		}
		t.Errorf("%s: malformed reference %s", where, ref)
		return ""
	}
	// indexing checks what follows TYPE.NAME: an index only on a counted resource, an
	// attribute only on one that is not (a bare reference is a splat or depends_on).
	indexing := func(b *hclsyntax.Block, rest hcl.Traversal) {
		_, c := b.Body.Attributes["count"]
		_, f := b.Body.Attributes["for_each"]
		if len(rest) == 0 {
			return
		}
		switch rest[0].(type) {
		case hcl.TraverseIndex:
			if !c && !f {
				t.Errorf("%s: %s indexes a resource without count or for_each", where, ref)
			}
		case hcl.TraverseAttr:
			if c || f {
				t.Errorf("%s: %s needs an index (the resource has count or for_each)", where, ref)
			}
		}
	}
	switch root := tr.RootName(); root {
	case "var":
		name := attr(1)
		if _, ok := m.variables[name]; !ok {
			t.Errorf("%s: %s is not declared", where, ref)
		}
		usedVars[name] = true
	case "local":
		name := attr(1)
		if _, ok := m.locals[name]; !ok {
			t.Errorf("%s: %s is not declared", where, ref)
		}
		usedLocals[name] = true
	case "data":
		key := attr(1) + "." + attr(2)
		if b, ok := m.data[key]; !ok {
			t.Errorf("%s: %s: no data %q in the module", where, ref, key)
		} else {
			indexing(b, tr[3:])
		}
	case "path":
		if n := attr(1); n != "module" && n != "root" && n != "cwd" {
			t.Errorf("%s: unknown %s", where, ref)
		}
	case "count":
		if !counted || attr(1) != "index" {
			t.Errorf("%s: %s outside a block with count", where, ref)
		}
	case "each":
		if n := attr(1); !forEach || (n != "key" && n != "value") {
			t.Errorf("%s: %s outside a block with for_each", where, ref)
		}
	case "terraform", "self":
		t.Errorf("%s: %s is not expected in this module", where, ref)
	default:
		key := root + "." + attr(1)
		if b, ok := m.resources[key]; !ok {
			t.Errorf("%s: %s: no resource %q in the module", where, ref, key)
		} else {
			indexing(b, tr[2:])
		}
	}
}

func traversalString(tr hcl.Traversal) string {
	var b strings.Builder
	for _, s := range tr {
		switch s := s.(type) {
		case hcl.TraverseRoot:
			b.WriteString(s.Name)
		case hcl.TraverseAttr:
			b.WriteString("." + s.Name)
		case hcl.TraverseIndex:
			if s.Key.Type() == cty.String {
				fmt.Fprintf(&b, "[%q]", s.Key.AsString())
			} else if s.Key.Type() == cty.Number {
				fmt.Fprintf(&b, "[%s]", s.Key.AsBigFloat().String())
			} else {
				b.WriteString("[?]")
			}
		default:
			b.WriteString(".?")
		}
	}
	return b.String()
}

func TestVariablesAreDocumentedAndValidated(t *testing.T) {
	m := loadModule(t)
	for name, b := range m.variables {
		where := "variable " + name
		if d, ok := b.Body.Attributes["description"]; !ok || strings.TrimSpace(literalString(t, where+" description", d.Expr)) == "" {
			t.Errorf("%s has no description", where)
		}
		if _, ok := b.Body.Attributes["type"]; !ok {
			t.Errorf("%s has no type", where)
		}
		for _, v := range b.Body.Blocks {
			if v.Type != "validation" {
				t.Errorf("%s: unexpected block %q", where, v.Type)
				continue
			}
			cond, ok := v.Body.Attributes["condition"]
			if !ok {
				t.Errorf("%s: validation without condition", where)
				continue
			}
			// Before Terraform 1.9 a validation may refer to its own variable only.
			self := false
			for _, tr := range hclsyntax.Variables(cond.Expr) {
				if tr.RootName() != "var" && tr.RootName() != "local" {
					t.Errorf("%s: validation refers to %s", where, traversalString(tr))
					continue
				}
				if a, ok := tr[1].(hcl.TraverseAttr); !ok || tr.RootName() != "var" || a.Name != name {
					t.Errorf("%s: validation refers to %s; Terraform 1.5 allows only var.%s", where, traversalString(tr), name)
				} else {
					self = true
				}
			}
			if !self {
				t.Errorf("%s: validation condition does not refer to var.%s", where, name)
			}
			checkErrorMessage(t, where, v.Body)
		}
	}
	// Preconditions and postconditions follow the same rule as validations.
	for p, body := range m.bodies {
		for _, top := range body.Blocks {
			walkBlocks(top.Body, func(b *hclsyntax.Block) {
				if b.Type == "precondition" || b.Type == "postcondition" {
					checkErrorMessage(t, fmt.Sprintf("%s: %s %s %s", p, top.Type, strings.Join(top.Labels, "."), b.Type), b.Body)
				}
			})
		}
	}
}

func walkBlocks(body *hclsyntax.Body, f func(*hclsyntax.Block)) {
	for _, b := range body.Blocks {
		f(b)
		walkBlocks(b.Body, f)
	}
}

// checkErrorMessage: Terraform wants a sentence, starting with a capital and ending with a period.
func checkErrorMessage(t *testing.T, where string, body *hclsyntax.Body) {
	t.Helper()
	a, ok := body.Attributes["error_message"]
	if !ok {
		t.Errorf("%s: no error_message", where)
		return
	}
	msg := literalString(t, where+" error_message", a.Expr)
	if msg == "" {
		return
	}
	if !unicode.IsUpper([]rune(msg)[0]) || !strings.HasSuffix(msg, ".") {
		t.Errorf("%s: error_message %q must start with a capital letter and end with a period", where, msg)
	}
}

func TestOutputs(t *testing.T) {
	m := loadModule(t)
	if len(m.outputs) == 0 {
		t.Fatal("no outputs")
	}
	for name, b := range m.outputs {
		where := "output " + name
		if d, ok := b.Body.Attributes["description"]; !ok || literalString(t, where+" description", d.Expr) == "" {
			t.Errorf("%s has no description", where)
		}
		v, ok := b.Body.Attributes["value"]
		if !ok {
			t.Errorf("%s has no value", where)
			continue
		}
		refs := hclsyntax.Variables(v.Expr)
		if len(refs) == 0 {
			t.Errorf("%s refers to nothing in the module", where)
		}
		// What the AWS provider marks sensitive must be declared so (Terraform refuses otherwise);
		// say so in the module too, and never let a private key out unmarked.
		src := string(v.Expr.Range().SliceBytes(m.files[v.SrcRange.Filename]))
		if strings.Contains(src, "private_key") || strings.Contains(src, "certificate_pem") {
			sensitive := false
			if s, ok := b.Body.Attributes["sensitive"]; ok {
				val, _ := s.Expr.Value(nil)
				sensitive = val.Type() == cty.Bool && val.True()
			}
			if !sensitive {
				t.Errorf("%s exposes a certificate or key and must be sensitive = true", where)
			}
		}
	}
	for _, want := range []string{"public_addr", "public_ip", "mqtt_url", "iot_endpoint", "device_certificates", "device_private_keys", "device_agent_yaml", "instance_id", "state_volume_id"} {
		if _, ok := m.outputs[want]; !ok {
			t.Errorf("output %q is missing", want)
		}
	}
}

// templateCall is a templatefile() or file() call in the module.
type templateCall struct {
	fn, path string
	vars     []string // templatefile's variable names, sorted
}

func findFileCalls(t *testing.T, m *module) []templateCall {
	t.Helper()
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{
		"path": cty.ObjectVal(map[string]cty.Value{"module": cty.StringVal(modDir)}),
	}}
	var calls []templateCall
	for _, body := range m.bodies {
		hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
			call, ok := n.(*hclsyntax.FunctionCallExpr)
			if !ok || (call.Name != "templatefile" && call.Name != "file") {
				return nil
			}
			where := fmt.Sprintf("%s() at %s", call.Name, call.Range())
			pv, diags := call.Args[0].Value(ctx)
			if diags.HasErrors() || pv.Type() != cty.String {
				t.Errorf("%s: the path must be a string built from path.module (%s)", where, diags)
				return nil
			}
			c := templateCall{fn: call.Name, path: pv.AsString()}
			if call.Name == "templatefile" {
				obj, ok := call.Args[1].(*hclsyntax.ObjectConsExpr)
				if !ok {
					t.Errorf("%s: the variables must be an object literal", where)
					return nil
				}
				for _, item := range obj.Items {
					c.vars = append(c.vars, hcl.ExprAsKeyword(item.KeyExpr))
				}
				sort.Strings(c.vars)
			}
			calls = append(calls, c)
			return nil
		})
	}
	return calls
}

func TestTemplateFilesAndVariables(t *testing.T) {
	m := loadModule(t)
	calls := findFileCalls(t, m)
	sawUserData := false
	for _, c := range calls {
		if _, err := os.Stat(c.path); err != nil {
			t.Errorf("%s(%q): %v", c.fn, c.path, err)
			continue
		}
		if c.fn != "templatefile" {
			continue
		}
		sawUserData = sawUserData || filepath.Base(c.path) == userDataTmpl
		used := templateVariables(t, c.path)
		passed := map[string]bool{}
		for _, v := range c.vars {
			passed[v] = true
			if !used[v] {
				t.Errorf("templatefile(%q) passes %q, which the template never uses", c.path, v)
			}
		}
		for v := range used {
			if !passed[v] {
				t.Errorf("template %s uses ${%s}, which templatefile() does not pass", c.path, v)
			}
		}
	}
	if !sawUserData {
		t.Errorf("no templatefile() call renders %s", userDataTmpl)
	}
}

// templateVariables parses a template as templatefile does and returns the variables it uses.
func templateVariables(t *testing.T, path string) map[string]bool {
	t.Helper()
	expr := parseTemplate(t, path)
	used := map[string]bool{}
	for _, tr := range hclsyntax.Variables(expr) {
		used[tr.RootName()] = true
	}
	hclsyntax.VisitAll(expr, func(n hclsyntax.Node) hcl.Diagnostics {
		if call, ok := n.(*hclsyntax.FunctionCallExpr); ok {
			t.Errorf("%s calls %s(); this test renders templates without Terraform's functions", path, call.Name)
		}
		return nil
	})
	return used
}

func parseTemplate(t *testing.T, path string) hclsyntax.Expression {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	expr, diags := hclsyntax.ParseTemplate(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s: %s", path, diags)
	}
	return expr
}

// userDataVars are the user data's variables for two opposite set-ups, as server.tf would
// pass them: the defaults, and AWS IoT with the binary from S3 on port 22.
func userDataVars(t *testing.T) map[string]map[string]cty.Value {
	t.Helper()
	unit, err := os.ReadFile(serverUnit)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(modDir, "AmazonRootCA1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	s := cty.StringVal
	base := map[string]cty.Value{
		"region":             s("eu-west-1"),
		"state_dir":          s("/var/lib/switchboard"),
		"state_volume_id":    s("vol-0123456789abcdef0"),
		"switchboard_url":    s("https://example.com/releases/v1.0.0/switchboard-v1.0.0-linux-arm64"),
		"switchboard_sha256": s(strings.Repeat("0", 64)),
		"switchboard_s3_uri": s(""),
		"server_unit":        s(string(unit)),
		"exec_start":         s("/usr/local/bin/switchboard serve --listen :2222 --state-dir /var/lib/switchboard --public-addr 203.0.113.10:2222 --mqtt off"),
		"bind_privileged":    cty.False,
		"ssm_enabled":        cty.True,
		"iot_enabled":        cty.False,
		"iot_dir":            s("/etc/switchboard/iot"),
		"iot_cert_parameter": s(""),
		"iot_key_parameter":  s(""),
		"iot_cert_id":        s(""),
		"amazon_root_ca":     s(""),
		"known_hosts_host":   s("[203.0.113.10]:2222"),
	}
	iot := map[string]cty.Value{}
	for k, v := range base {
		iot[k] = v
	}
	for k, v := range map[string]cty.Value{
		"switchboard_url":    s(""),
		"switchboard_sha256": s(""),
		"switchboard_s3_uri": s("s3://my-artifacts/switchboard/switchboard-linux-arm64"),
		"exec_start":         s("/usr/local/bin/switchboard serve --listen :22 --state-dir /var/lib/switchboard --public-addr pivot.example.com:22 --mqtt mqtts://a1b2c3-ats.iot.eu-west-1.amazonaws.com:8883 --mqtt-ca /etc/switchboard/iot/AmazonRootCA1.pem --mqtt-cert /etc/switchboard/iot/server.crt --mqtt-key /etc/switchboard/iot/server.key"),
		"bind_privileged":    cty.True,
		"ssm_enabled":        cty.False,
		"iot_enabled":        cty.True,
		"iot_cert_parameter": s("/switchboard/iot/server.crt"),
		"iot_key_parameter":  s("/switchboard/iot/server.key"),
		"iot_cert_id":        s(strings.Repeat("a", 64)),
		"amazon_root_ca":     s(string(ca)),
		"known_hosts_host":   s("pivot.example.com"),
	} {
		iot[k] = v
	}
	return map[string]map[string]cty.Value{"defaults": base, "iot-s3-port22": iot}
}

func TestUserDataRenders(t *testing.T) {
	path := filepath.Join(modDir, userDataTmpl)
	expr := parseTemplate(t, path)
	used := templateVariables(t, path)
	unit, _ := os.ReadFile(serverUnit)
	shellcheck, _ := exec.LookPath("shellcheck")
	if shellcheck == "" {
		t.Log("shellcheck is not installed: only bash -n checks the rendered user data")
	}
	for name, vars := range userDataVars(t) {
		t.Run(name, func(t *testing.T) {
			for v := range used {
				if _, ok := vars[v]; !ok {
					t.Fatalf("this test gives no value for the template's ${%s}", v)
				}
			}
			val, diags := expr.Value(&hcl.EvalContext{Variables: vars})
			if diags.HasErrors() {
				t.Fatalf("render: %s", diags)
			}
			script := val.AsString()
			if len(script) > userDataMax {
				t.Errorf("rendered user data is %d bytes; EC2 accepts %d", len(script), userDataMax)
			}
			t.Logf("rendered user data: %d bytes of EC2's %d", len(script), userDataMax)
			file := filepath.Join(t.TempDir(), "user_data.sh")
			if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("bash", "-n", file).CombinedOutput(); err != nil {
				t.Errorf("bash -n: %v\n%s", err, out)
			}
			if shellcheck != "" {
				if out, err := exec.Command(shellcheck, "-s", "bash", file).CombinedOutput(); err != nil {
					t.Errorf("shellcheck: %v\n%s", err, out)
				}
			}
			// The unit goes in verbatim (a quoted heredoc: no expansion), the drop-in after it.
			if !strings.Contains(script, "<<'SWITCHBOARD_UNIT'\n"+string(unit)+"\nSWITCHBOARD_UNIT\n") {
				t.Error("the rendered user data does not carry deploy/systemd/switchboard-server.service verbatim")
			}
			dropIn := heredoc(t, script, "SWITCHBOARD_DROPIN")
			for _, want := range []string{"RequiresMountsFor=/var/lib/switchboard\n", "DynamicUser=no\n", "User=switchboard\n", "ExecStart=\nExecStart=" + vars["exec_start"].AsString() + "\n"} {
				if !strings.Contains(dropIn, want) {
					t.Errorf("the drop-in lacks %q:\n%s", want, dropIn)
				}
			}
			if got, want := strings.Contains(dropIn, "AmbientCapabilities=CAP_NET_BIND_SERVICE\n"), vars["bind_privileged"].True(); got != want {
				t.Errorf("CAP_NET_BIND_SERVICE in the drop-in: %v, want %v", got, want)
			}
			if vars["iot_enabled"].True() {
				if got := heredoc(t, script, "SWITCHBOARD_CA"); strings.TrimSpace(got) != strings.TrimSpace(vars["amazon_root_ca"].AsString()) {
					t.Errorf("the CA heredoc holds %q", got)
				}
			}
			if strings.Contains(script, "PRIVATE KEY") {
				t.Error("the user data carries a private key")
			}
		})
	}
}

// heredoc returns the body of the quoted heredoc <<'NAME' in script.
func heredoc(t *testing.T, script, name string) string {
	t.Helper()
	_, rest, ok := strings.Cut(script, "<<'"+name+"'\n")
	if !ok {
		t.Fatalf("no heredoc %s", name)
	}
	body, _, ok := strings.Cut(rest, "\n"+name+"\n")
	if !ok {
		t.Fatalf("heredoc %s is not closed", name)
	}
	return body + "\n"
}

// TestBlkidContract checks, on this machine's util-linux, what the user data relies on to
// format the state volume only when it is blank: blkid -p exits 2 for nothing at all, and 0
// with TYPE= for a file system or with only PTTYPE= for a partition table.
func TestBlkidContract(t *testing.T) {
	blkid, err1 := exec.LookPath("blkid")
	mkfs, err2 := exec.LookPath("mkfs.ext4")
	if err1 != nil || err2 != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("blkid (util-linux) or mkfs.ext4 (e2fsprogs) is not installed")
		}
		t.Skip("blkid or mkfs.ext4 is not installed")
	}
	dir := t.TempDir()
	probe := func(img string) (string, int) {
		out, err := exec.Command(blkid, "-p", "-o", "export", img).Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, rc := probe(blank); rc != 2 {
		t.Errorf("blkid -p on a blank volume: exit %d, %q; the user data formats only on exit 2", rc, out)
	}
	// A DOS partition table with one Linux partition and nothing else.
	mbr := make([]byte, 4<<20)
	copy(mbr[446:], []byte{0, 0, 2, 0, 0x83, 0, 0, 0, 0, 8, 0, 0, 0, 16, 0, 0})
	mbr[510], mbr[511] = 0x55, 0xaa
	parted := filepath.Join(dir, "parted.img")
	if err := os.WriteFile(parted, mbr, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, rc := probe(parted); rc != 0 || !strings.Contains(out, "PTTYPE=") || regexp.MustCompile(`(?m)^TYPE=`).MatchString(out) {
		t.Errorf("blkid -p on a partitioned volume: exit %d, %q; want 0, PTTYPE and no TYPE", rc, out)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", blank).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, rc := probe(blank); rc != 0 || !strings.Contains(out, "\nTYPE=ext4\n") || !strings.Contains(out, "\nUUID=") {
		t.Errorf("blkid -p on an ext4 volume: exit %d, %q", rc, out)
	}
}

func TestAmazonRootCA(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(modDir, "AmazonRootCA1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(b)
	if block == nil || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatal("AmazonRootCA1.pem is not exactly one PEM block")
	}
	if sum := sha256.Sum256(block.Bytes); hex.EncodeToString(sum[:]) != amazonCA1SHA {
		t.Errorf("AmazonRootCA1.pem has SHA-256 fingerprint %x, not Amazon Root CA 1's", sum)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "Amazon Root CA 1" || time.Until(cert.NotAfter) < 365*24*time.Hour {
		t.Errorf("AmazonRootCA1.pem: %s, expires %s", cert.Subject, cert.NotAfter)
	}
}

// ---------------------------------------------------------------------------------------------
// A small evaluator: enough of Terraform to compute the module's locals and policies from
// variable defaults and stand-in values for what AWS would return.
// ---------------------------------------------------------------------------------------------

type evaluator struct {
	m      *module
	vars   map[string]cty.Value // overrides of variable defaults
	refs   map[string]cty.Value // values of data/resource attributes, by traversal string
	locals map[string]cty.Value
	busy   map[string]bool
}

func newEvaluator(m *module, vars, refs map[string]cty.Value) *evaluator {
	return &evaluator{m: m, vars: vars, refs: refs, locals: map[string]cty.Value{}, busy: map[string]bool{}}
}

var functions = map[string]function.Function{
	"coalesce":    stdlib.CoalesceFunc,
	"concat":      stdlib.ConcatFunc,
	"join":        stdlib.JoinFunc,
	"jsonencode":  stdlib.JSONEncodeFunc,
	"length":      stdlib.LengthFunc,
	"regex":       stdlib.RegexFunc,
	"toset":       stdlib.MakeToFunc(cty.Set(cty.DynamicPseudoType)),
	"strcontains": strcontainsFunc,
	"one":         oneFunc,
}

var strcontainsFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "str", Type: cty.String}, {Name: "substr", Type: cty.String}},
	Type:   function.StaticReturnType(cty.Bool),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return cty.BoolVal(strings.Contains(args[0].AsString(), args[1].AsString())), nil
	},
})

var oneFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "list", Type: cty.DynamicPseudoType}},
	Type:   function.StaticReturnType(cty.DynamicPseudoType),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		switch n := args[0].LengthInt(); n {
		case 0:
			return cty.NullVal(cty.DynamicPseudoType), nil
		case 1:
			return args[0].AsValueSlice()[0], nil
		default:
			return cty.NilVal, fmt.Errorf("one(): %d elements", n)
		}
	},
})

func (e *evaluator) variable(name string) (cty.Value, error) {
	b := e.m.variables[name]
	ty, diags := typeexpr.TypeConstraint(b.Body.Attributes["type"].Expr)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("variable %s type: %s", name, diags)
	}
	v, ok := e.vars[name]
	if !ok {
		d, has := b.Body.Attributes["default"]
		if !has {
			return cty.UnknownVal(ty), nil // required, and not needed by this test
		}
		var diags hcl.Diagnostics
		if v, diags = d.Expr.Value(nil); diags.HasErrors() {
			return cty.NilVal, fmt.Errorf("variable %s default: %s", name, diags)
		}
	}
	return convert.Convert(v, ty)
}

func (e *evaluator) local(name string) (cty.Value, error) {
	if v, ok := e.locals[name]; ok {
		return v, nil
	}
	a, ok := e.m.locals[name]
	if !ok {
		return cty.NilVal, fmt.Errorf("no local %q", name)
	}
	if e.busy[name] {
		return cty.NilVal, fmt.Errorf("local %q depends on itself", name)
	}
	e.busy[name] = true
	defer delete(e.busy, name)
	v, err := e.eval(a.Expr)
	if err != nil {
		return cty.NilVal, fmt.Errorf("local.%s: %w", name, err)
	}
	e.locals[name] = v
	return v, nil
}

// node builds a stand-in object for data.* and resource references.
type node struct {
	attrs map[string]*node
	index map[int]*node
}

func (n *node) add(steps hcl.Traversal) {
	if len(steps) == 0 {
		return
	}
	var c *node
	switch s := steps[0].(type) {
	case hcl.TraverseAttr:
		if n.attrs == nil {
			n.attrs = map[string]*node{}
		}
		if n.attrs[s.Name] == nil {
			n.attrs[s.Name] = &node{}
		}
		c = n.attrs[s.Name]
	case hcl.TraverseIndex:
		if s.Key.Type() != cty.Number {
			return // a for_each key: not needed by these tests
		}
		i64, _ := s.Key.AsBigFloat().Int64()
		i := int(i64)
		if n.index == nil {
			n.index = map[int]*node{}
		}
		if n.index[i] == nil {
			n.index[i] = &node{}
		}
		c = n.index[i]
	default:
		return
	}
	c.add(steps[1:])
}

func (n *node) value(path string, refs map[string]cty.Value) cty.Value {
	if v, ok := refs[path]; ok {
		return v
	}
	switch {
	case len(n.index) > 0:
		max := 0
		for i := range n.index {
			max = maxInt(max, i)
		}
		elems := make([]cty.Value, max+1)
		for i := range elems {
			c := n.index[i]
			if c == nil {
				c = &node{}
			}
			elems[i] = c.value(fmt.Sprintf("%s[%d]", path, i), refs)
		}
		return cty.TupleVal(elems)
	case len(n.attrs) > 0:
		attrs := map[string]cty.Value{}
		for k, c := range n.attrs {
			attrs[k] = c.value(path+"."+k, refs)
		}
		return cty.ObjectVal(attrs)
	default:
		return cty.StringVal("<" + path + ">")
	}
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func (e *evaluator) eval(expr hcl.Expression) (cty.Value, error) {
	vars := map[string]cty.Value{}
	locals := map[string]cty.Value{}
	trees := map[string]*node{}
	for _, tr := range expr.Variables() {
		root := tr.RootName()
		switch root {
		case "var":
			name := tr[1].(hcl.TraverseAttr).Name
			v, err := e.variable(name)
			if err != nil {
				return cty.NilVal, err
			}
			vars[name] = v
		case "local":
			name := tr[1].(hcl.TraverseAttr).Name
			v, err := e.local(name)
			if err != nil {
				return cty.NilVal, err
			}
			locals[name] = v
		default:
			if trees[root] == nil {
				trees[root] = &node{}
			}
			trees[root].add(tr[1:])
		}
	}
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{}, Functions: functions}
	ctx.Variables["var"] = cty.ObjectVal(vars)
	ctx.Variables["local"] = cty.ObjectVal(locals)
	for root, n := range trees {
		ctx.Variables[root] = n.value(root, e.refs)
	}
	v, diags := expr.Value(ctx)
	if diags.HasErrors() {
		return cty.NilVal, errors.New(diags.Error())
	}
	return v, nil
}

// awsRefs are stand-ins for what AWS returns, named as docs/aws-iot.md names them.
var awsRefs = map[string]cty.Value{
	"data.aws_partition.current.partition":          cty.StringVal("aws"),
	"data.aws_region.current.name":                  cty.StringVal("REGION"),
	"data.aws_caller_identity.current.account_id":   cty.StringVal("ACCOUNT"),
	"data.aws_iot_endpoint.ats[0].endpoint_address": cty.StringVal("xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"),
	"aws_eip.server[0].public_ip":                   cty.StringVal("203.0.113.10"),
	"path.module":                                   cty.StringVal(modDir),
}

// docPolicy returns the JSON policy that docs/aws-iot.md gives as `switchboard-NAME.json`.
func docPolicy(t *testing.T, name string) any {
	t.Helper()
	doc, err := os.ReadFile(awsIoTDoc)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "`switchboard-"+name+".json`")
	if ok {
		_, rest, ok = strings.Cut(rest, "```json\n")
	}
	var body string
	if ok {
		body, _, ok = strings.Cut(rest, "\n```")
	}
	if !ok {
		t.Fatalf("%s: no json block after `switchboard-%s.json`", awsIoTDoc, name)
	}
	var v any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%s: switchboard-%s.json: %v", awsIoTDoc, name, err)
	}
	return v
}

func TestIoTPoliciesMatchTheDocs(t *testing.T) {
	m := loadModule(t)
	for _, name := range []string{"device", "server"} {
		b, ok := m.resources["aws_iot_policy."+name]
		if !ok {
			t.Errorf("no aws_iot_policy.%s", name)
			continue
		}
		v, err := newEvaluator(m, nil, awsRefs).eval(b.Body.Attributes["policy"].Expr)
		if err != nil {
			t.Errorf("aws_iot_policy.%s: %v", name, err)
			continue
		}
		var got any
		if err := json.Unmarshal([]byte(v.AsString()), &got); err != nil {
			t.Fatalf("aws_iot_policy.%s is not JSON: %v", name, err)
		}
		if want := docPolicy(t, name); !reflect.DeepEqual(got, want) {
			t.Errorf("aws_iot_policy.%s differs from docs/aws-iot.md:\n got %s\nwant %s", name, mustJSON(got), mustJSON(want))
		}
		checkLeastPrivilege(t, name, got)
	}
}

// checkLeastPrivilege: no iot:* action on "*"; every device statement pinned to the thing name.
func checkLeastPrivilege(t *testing.T, name string, policy any) {
	t.Helper()
	const thing = "${iot:Connection.Thing.ThingName}"
	stmts, _ := policy.(map[string]any)["Statement"].([]any)
	if len(stmts) == 0 {
		t.Errorf("%s policy has no statements", name)
	}
	for _, s := range stmts {
		st := s.(map[string]any)
		for _, r := range asStrings(st["Resource"]) {
			for _, a := range asStrings(st["Action"]) {
				switch a {
				case "iot:Connect", "iot:Publish", "iot:RetainPublish", "iot:Subscribe", "iot:Receive":
				default:
					t.Errorf("%s policy: unexpected action %s", name, a)
				}
				if r == "*" || strings.HasSuffix(r, ":*") || strings.HasSuffix(r, "/*") {
					t.Errorf("%s policy: %s on %q", name, a, r)
				}
				if name == "device" && (!strings.Contains(r, thing) || strings.Contains(strings.ReplaceAll(r, thing, ""), "*")) {
					t.Errorf("device policy: %s on %q is not pinned to %s", a, r, thing)
				}
			}
		}
	}
}

func asStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			s, _ := e.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestAgentYAMLIsWhatEnrollWrites compares the device_agent_yaml output with the agent.yaml
// `switchboard enroll NAME --role device --on-demand --mqtt-url URL` writes, and loads it.
func TestAgentYAMLIsWhatEnrollWrites(t *testing.T) {
	m := loadModule(t)
	for _, prefix := range []string{"switchboard", "fleet/a"} {
		vars := map[string]cty.Value{
			"iot_enabled": cty.True,
			"devices":     cty.SetVal([]cty.Value{cty.StringVal("dev42")}),
			"mqtt_prefix": cty.StringVal(prefix),
		}
		ev := newEvaluator(m, vars, awsRefs)
		v, err := ev.local("device_agent_yaml")
		if err != nil {
			t.Fatal(err)
		}
		got := v.GetAttr("dev42").AsString()
		url, _ := ev.local("mqtt_url")
		addr, _ := ev.local("public_addr")

		state, out := t.TempDir(), filepath.Join(t.TempDir(), "dev42")
		if _, _, err := hostkey.LoadOrCreate(filepath.Join(state, enroll.HostKeyFile)); err != nil {
			t.Fatal(err)
		}
		o := enroll.Options{Name: "dev42", Role: enroll.Device, Out: out, StateDir: state,
			Server: addr.AsString(), OnDemand: true, MQTTURL: url.AsString()}
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := enroll.Run(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(out, enroll.AgentFile))
		if err != nil {
			t.Fatal(err)
		}
		// Past the first comment line they must be the same, plus mqtt_prefix when not default.
		wantBody := string(want[bytes.IndexByte(want, '\n')+1:])
		if prefix != "switchboard" {
			wantBody += fmt.Sprintf("mqtt_prefix: %q\n", prefix)
		}
		if gotBody := got[strings.IndexByte(got, '\n')+1:]; gotBody != wantBody {
			t.Errorf("prefix %s: device_agent_yaml differs from enroll's agent.yaml:\n--- got\n%s--- want\n%s", prefix, gotBody, wantBody)
		}
		cfg, err := agent.ParseConfig([]byte(got), "device_agent_yaml")
		if err != nil {
			t.Fatalf("prefix %s: the agent rejects device_agent_yaml: %v", prefix, err)
		}
		if cfg.Name != "dev42" || cfg.Server != addr.AsString() || cfg.MQTT == nil || cfg.MQTT.URL != url.AsString() ||
			(prefix != "switchboard" && cfg.MQTT.Prefix != prefix) {
			t.Errorf("prefix %s: the agent reads %+v (MQTT %+v)", prefix, cfg, cfg.MQTT)
		}
	}
}

// TestServeFlagsExist evaluates the server's command line for several set-ups and checks
// that every flag is one `switchboard serve` declares.
func TestServeFlagsExist(t *testing.T) {
	m := loadModule(t)
	src, err := os.ReadFile(serveFlags)
	if err != nil {
		t.Fatal(err)
	}
	for name, vars := range map[string]map[string]cty.Value{
		"defaults": nil,
		"embedded": {"embedded_broker": cty.True, "mqtt_prefix": cty.StringVal("fleet")},
		"iot":      {"iot_enabled": cty.True, "server_extra_args": cty.ListVal([]cty.Value{cty.StringVal("--domain"), cty.StringVal("example.com")})},
	} {
		v, err := newEvaluator(m, vars, awsRefs).local("serve_args")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var args []string
		for _, a := range v.AsValueSlice() {
			args = append(args, a.AsString())
		}
		if len(args) < 2 || args[0] != "/usr/local/bin/switchboard" || args[1] != "serve" {
			t.Errorf("%s: command line %q", name, args)
		}
		for _, a := range args {
			if strings.ContainsAny(a, " \t'\"%\\") {
				t.Errorf("%s: argument %q would be split or expanded by systemd", name, a)
			}
			if flag, ok := strings.CutPrefix(a, "--"); ok && !bytes.Contains(src, []byte(`"`+flag+`"`)) {
				t.Errorf("%s: %s is not a flag of switchboard serve (%s)", name, a, serveFlags)
			}
		}
		t.Logf("%s: %s", name, strings.Join(args, " "))
	}
}

func TestTfvarsExample(t *testing.T) {
	m := loadModule(t)
	p := filepath.Join(modDir, "terraform.tfvars.example")
	src, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig(src, p, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	attrs := f.Body.(*hclsyntax.Body).Attributes
	for name := range attrs {
		if _, ok := m.variables[name]; !ok {
			t.Errorf("%s sets %q, which is not a variable", p, name)
		}
	}
	for name, b := range m.variables {
		if _, hasDefault := b.Body.Attributes["default"]; !hasDefault {
			if _, ok := attrs[name]; !ok {
				t.Errorf("%s does not set the required variable %q", p, name)
			}
		}
	}
}
