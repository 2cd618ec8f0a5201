package enroll

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

var codeFormat = regexp.MustCompile(`^[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5}){5}$`)

func newCode(t *testing.T) string {
	t.Helper()
	c, err := NewCode()
	if err != nil {
		t.Fatalf("NewCode: %v", err)
	}
	return c
}

func TestNewCodeFormat(t *testing.T) {
	if len(alphabet) != 32 || strings.ContainsAny(alphabet, "ILOU") {
		t.Fatalf("alphabet %q: want 32 symbols without I, L, O, U", alphabet)
	}
	for range 1000 {
		c := newCode(t)
		if !codeFormat.MatchString(c) {
			t.Fatalf("NewCode() = %q, want six groups of five Crockford symbols", c)
		}
		if n, err := Normalize(c); err != nil || n != c {
			t.Fatalf("Normalize(%q) = %q, %v; a new code must already be canonical", c, n, err)
		}
	}
}

// TestNewCodeRandomness checks that codes do not repeat and that every symbol
// appears at every position: a stuck or biased generator fails one of them.
func TestNewCodeRandomness(t *testing.T) {
	const n = 20000
	seen := make(map[string]bool, n)
	var counts [symbols][32]int
	for range n {
		c := newCode(t)
		if seen[c] {
			t.Fatalf("NewCode repeated %q", c)
		}
		seen[c] = true
		pos := 0
		for _, r := range c {
			if r == '-' {
				continue
			}
			counts[pos][strings.IndexRune(alphabet, r)]++
			pos++
		}
	}
	// Each symbol is expected n/32 = 625 times per position with a standard
	// deviation of about 25; outside 400..850 is beyond 8 sigma.
	for pos := range counts {
		for sym, k := range counts[pos] {
			if k < 400 || k > 850 {
				t.Errorf("symbol %c at position %d appeared %d times in %d codes, want about %d", alphabet[sym], pos, k, n, n/32)
			}
		}
	}
}

func TestNormalize(t *testing.T) {
	const canon = "7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1"
	good := []string{
		canon,
		strings.ToLower(canon),
		"7KQ2M9XB4DJ0RTW5HN8PCZ3VEG6AF1",
		"7kq2m 9xb4d j0rtw 5hn8p cz3ve g6af1",
		"  7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1\n",
		"7KQ2M-9XB4D-JORTW-5HN8P-CZ3VE-G6AFI", // O for zero, I for one
		"7KQ2M-9XB4D-JoRTW-5HN8P-CZ3VE-G6AFl", // o for zero, l for one
		"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AFL",
		"7KQ2M–9XB4D—J0RTW‐5HN8P-CZ3VE-G6AF1", // en dash, em dash, hyphen from a mail client
		"7KQ2M\u00a09XB4D\tJ0RTW-5HN8P--CZ3VE-G6AF1",
		"7K-Q2M9X-B4DJ0RT-W5HN8PCZ3VEG6-AF1", // grouped wrongly but complete
	}
	for _, in := range good {
		got, err := Normalize(in)
		if err != nil || got != canon {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, canon)
		}
	}
	bad := []struct{ in, mention string }{
		{"", "0 characters"},
		{"   --  ", "0 characters"},
		{"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF", "29 characters"},
		{"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1X", "more than 30"},
		{"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AFU", "'U'"},
		{"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF!", "'!'"},
		{"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF١", "'١'"},
		{"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF\xff", "'\ufffd'"},
		{"7KQ2M_9XB4D_J0RTW_5HN8P_CZ3VE_G6AF1", "'_'"},
	}
	for _, tc := range bad {
		got, err := Normalize(tc.in)
		if !errors.Is(err, ErrMalformedCode) {
			t.Errorf("Normalize(%q) = %q, %v; want ErrMalformedCode", tc.in, got, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Normalize(%q): %q does not mention %q", tc.in, err, tc.mention)
		}
	}
}

func TestHash(t *testing.T) {
	c := newCode(t)
	h := Hash(c)
	if len(h) != sha256.Size {
		t.Fatalf("Hash length %d, want %d", len(h), sha256.Size)
	}
	if plain := sha256.Sum256([]byte(c)); bytes.Equal(h, plain[:]) {
		t.Error("Hash is plain SHA-256 of the code; want it domain-separated")
	}
	typed := strings.ToLower(strings.ReplaceAll(c, "-", " "))
	if !bytes.Equal(Hash(typed), h) {
		t.Errorf("Hash(%q) differs from Hash(%q): equivalent input must hash the same", typed, c)
	}
	if bytes.Equal(Hash(newCode(t)), h) {
		t.Error("two different codes hash the same")
	}
	// A fixed vector pins the scheme: changing prefix or canonical form
	// would orphan every stored code.
	want := sha256.Sum256([]byte("kms enrollment code v1\x007KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1"))
	if got := Hash("7kq2m9xb4dj0rtw5hn8pcz3veg6af1"); !bytes.Equal(got, want[:]) {
		t.Errorf("Hash of the test vector = %x, want %x", got, want)
	}
}

func TestCheck(t *testing.T) {
	code := "7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1"
	other := "7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF2"
	expires := time.Date(2026, time.June, 15, 12, 0, 0, 0, time.UTC)
	before := expires.Add(-time.Second)
	fresh := Code{Hash: Hash(code), ExpiresAt: expires}
	with := func(edit func(*Code)) Code { c := fresh; edit(&c); return c }
	const maxAttempts = 5
	tests := []struct {
		name  string
		code  Code
		input string
		now   time.Time
		want  error // nil: redeemed
	}{
		{"right code", fresh, code, before, nil},
		{"right code as typed", fresh, "7kq2m 9xb4d jortw 5hn8p cz3ve g6afl", before, nil},
		{"right code after 4 wrong tries", with(func(c *Code) { c.Attempts = 4 }), code, before, nil},
		{"wrong code", fresh, other, before, ErrCodeWrong},
		{"malformed", fresh, "7KQ2M-9XB4D", before, ErrMalformedCode},
		{"one instant before expiry", fresh, code, expires.Add(-time.Nanosecond), nil},
		{"at expiry", fresh, code, expires, ErrCodeExpired},
		{"after expiry", fresh, code, expires.Add(time.Hour), ErrCodeExpired},
		{"locked after 5 wrong tries", with(func(c *Code) { c.Attempts = 5 }), code, before, ErrCodeLocked},
		{"locked beats malformed", with(func(c *Code) { c.Attempts = 5 }), "x", before, ErrCodeLocked},
		{"locked beats expired", with(func(c *Code) { c.Attempts = 9 }), code, expires, ErrCodeLocked},
		{"used", with(func(c *Code) { c.Used = true }), code, before, ErrCodeUsed},
		{"used beats locked and expired", with(func(c *Code) { c.Used = true; c.Attempts = 5 }), code, expires, ErrCodeUsed},
		{"expired beats wrong", fresh, other, expires, ErrCodeExpired},
		{"no stored hash", with(func(c *Code) { c.Hash = nil }), code, before, ErrCodeWrong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.code.Check(tc.input, tc.now, maxAttempts)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Check: %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check: %v, want an error wrapping %v", err, tc.want)
			}
			for _, s := range []error{ErrMalformedCode, ErrCodeWrong, ErrCodeExpired, ErrCodeLocked, ErrCodeUsed} {
				if s != tc.want && errors.Is(err, s) {
					t.Errorf("Check: %v also wraps %v; want exactly one outcome", err, s)
				}
			}
		})
	}
	if err := fresh.Check(code, before, 0); !errors.Is(err, ErrCodeLocked) {
		t.Errorf("maxAttempts 0: Check = %v, want ErrCodeLocked (fail closed)", err)
	}
}

// TestCheckLockout plays the store: it counts wrong and malformed tries the
// way the caller must, and shows that the fifth wrong try locks the code
// even for the right code afterwards.
func TestCheckLockout(t *testing.T) {
	code := newCode(t)
	now := time.Date(2026, time.June, 1, 0, 0, 0, 0, time.UTC)
	c := Code{Hash: Hash(code), ExpiresAt: now.Add(14 * 24 * time.Hour)}
	tries := []string{"wrong", newCode(t), "", newCode(t), newCode(t)}
	for i, in := range tries {
		err := c.Check(in, now, 5)
		if !errors.Is(err, ErrCodeWrong) && !errors.Is(err, ErrMalformedCode) {
			t.Fatalf("try %d: %v, want wrong or malformed", i+1, err)
		}
		c.Attempts++
	}
	if err := c.Check(code, now, 5); !errors.Is(err, ErrCodeLocked) {
		t.Errorf("right code after 5 wrong tries: %v, want ErrCodeLocked", err)
	}
}

// FuzzNormalize checks that Normalize never panics, that what it accepts is
// canonical and stable, and that Hash agrees with it.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{
		"7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1",
		"7kq2m 9xb4d jortw 5hn8p cz3ve g6afl",
		"7KQ2M–9XB4D—J0RTW‐5HN8P-CZ3VE-G6AF1",
		"", "-", "U", "\xff", "7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1X",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := Normalize(in)
		if err != nil {
			if !errors.Is(err, ErrMalformedCode) {
				t.Fatalf("Normalize(%q): %v does not wrap ErrMalformedCode", in, err)
			}
			return
		}
		if !codeFormat.MatchString(got) {
			t.Fatalf("Normalize(%q) = %q, not canonical", in, got)
		}
		if again, err := Normalize(got); err != nil || again != got {
			t.Fatalf("Normalize(%q) = %q, %v; want it unchanged", got, again, err)
		}
		if !bytes.Equal(Hash(in), Hash(got)) {
			t.Fatalf("Hash(%q) != Hash(%q)", in, got)
		}
	})
}
