package smime

import "testing"

func BenchmarkComposeReply(b *testing.B) {
	g := loadGoldenPKI(b)
	m := testMessage(g.alice.cert, g.ca)
	s := g.kms.signer()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compose(m, s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyRequest(b *testing.B) {
	g := loadGoldenPKI(b)
	opts := g.opts()
	for _, f := range []string{"openssl-smime-detached-rsa.eml", "openssl-cms-detached-ec-crlf.eml", "openssl-rekey-pkcs10-ec.eml"} {
		raw := readGolden(b, f)
		b.Run(f, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := ParseRequest(raw, Limits{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := r.Verify(opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
