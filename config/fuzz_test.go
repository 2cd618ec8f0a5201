package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/kmsmail/kms/config"
)

// FuzzLoad feeds arbitrary bytes to LoadBytes. Whatever the input, Load must
// not panic; a refusal must be a config error whose every line names its
// subject; an accepted configuration must be valid in every domain's policy
// and survive a round trip through YAML unchanged. The seed corpus is the
// shipped configurations plus testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "config", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range append(files, filepath.Join("..", "kms.example.yaml")) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.LoadBytes(data, deploymentEnv)
		if err != nil {
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("error is not ErrInvalid: %v", err)
			}
			for line := range strings.SplitSeq(err.Error(), "\n") {
				if !strings.HasPrefix(line, "config: ") {
					t.Fatalf("error line %q does not start with \"config: \" (whole error: %q)", line, err)
				}
			}
			return
		}
		set := c.Policies()
		if err := set.Default.Validate(); err != nil {
			t.Fatalf("accepted an invalid global policy: %v", err)
		}
		for d, p := range set.Domains {
			if err := p.Validate(); err != nil {
				t.Fatalf("accepted an invalid policy for %s: %v", d, err)
			}
		}
		first, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("accepted configuration does not marshal: %v", err)
		}
		again, err := config.LoadBytes(first, deploymentEnv)
		if err != nil {
			t.Fatalf("accepted configuration, written out, is refused: %v\n%s", err, first)
		}
		second, err := yaml.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		if string(first) != string(second) {
			t.Fatalf("round trip changed the configuration:\n%s\nbecame\n%s", first, second)
		}
	})
}
