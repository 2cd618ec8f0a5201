// Package smime reads and writes the S/MIME messages of the kms mail
// protocol (SPEC section 4): it parses inbound requests, verifies and
// decrypts their CMS layer, extracts PKCS#10 certification requests, and
// composes the signed replies the KMS sends.
//
// The package has two layers.
//
// The CMS layer (VerifyDetached, VerifyOpaque, SignDetached, Encrypt,
// Decrypt, CertsOnly, ParseCertsOnly) works on DER or BER bytes. It wraps
// github.com/smallstep/pkcs7 for enveloping, decryption and signing. It
// parses SignedData (signeddata.go, on top of its own bounded BER-to-DER
// conversion in ber.go) and checks signatures itself, so that: the certificate chain is validated at
// the receipt time the caller passes and never at the signer's own
// signingTime attribute; SHA-1 and MD5 are refused; RSA-PSS is accepted; the
// signing time written into outgoing signatures comes from the caller's
// clock. No type of the wrapped library appears in this package's API.
//
// The MIME layer (ParseRequest, Request, Compose) deals with RFC 5322
// messages. A multipart/signed signature is verified over the exact bytes of
// the first body part as they were received, which go-message's decoding
// readers cannot give, so this package scans the multipart boundaries
// itself.
//
// A request is handled in this order:
//
//	req, err := smime.ParseRequest(raw, smime.Limits{})
//	if req.Kind == smime.KindEnveloped {
//		req, err = req.Decrypt(kmsCert, kmsKey) // the inner request
//	}
//	switch req.Kind {
//	case smime.KindSigned, smime.KindSignedOpaque: // a renewal
//		v, err := req.Verify(smime.VerifyOptions{Roots: roots, At: receivedAt})
//		// v.Signature.Signer, v.Signature.ReplayID, v.Content.CSRs
//	default: // an enrollment: the CSR's challengePassword authenticates
//		c, err := req.UnverifiedContent()
//	}
//
// and a reply is built by Compose(Message{...}, Signer{...}).
//
// Every parser here takes untrusted input: sizes, MIME part counts, nesting
// depth, header sizes and BER nesting are bounded (see Limits, MaxCMSBytes,
// MaxBERDepth), and exceeding a bound is reported as ErrLimit, never as a
// crash or a hang.
//
// Authentication results are reported with sentinel errors (ErrNotSigned,
// ErrBadSignature, ErrUntrustedSigner, ErrSignerExpired, ErrWeakAlgorithm,
// ...) so that callers can answer, drop or log a request by kind without
// parsing messages.
package smime
