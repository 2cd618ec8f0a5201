package admin

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"

	"github.com/kmsmail/kms/kms"
)

// maxImportCerts bounds the certificates in one import; a bundle of 1 MiB
// holds a few hundred, and each is a database transaction.
const maxImportCerts = 1000

// importCerts handles POST /api/v1/certs/import. The body is a PEM bundle
// or one DER certificate. A body that does not parse is refused whole, so
// nothing is imported from a file that needs fixing; after that, each
// certificate is imported on its own and reported on its own, because one
// user who already holds a certificate should not block the others.
func (s *Server) importCerts(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	certs, err := parseBundle(body)
	if err != nil {
		return err
	}
	resp := ImportResponse{Results: make([]ImportResult, 0, len(certs))}
	status, imported := http.StatusCreated, 0
	var firstErr error
	for i, c := range certs {
		res := ImportResult{Index: i, Serial: kms.SerialHex(c)}
		if len(c.EmailAddresses) == 1 {
			res.Email = c.EmailAddresses[0]
		}
		var ierr error
		switch {
		case c.IsCA:
			res.Result = ImportSkipped
			res.Error = "a CA certificate: kms tracks users' certificates only"
		case len(c.EmailAddresses) != 1:
			ierr = badRequest(CodeBadCertificate, fmt.Sprintf("certificate %s names %d mail addresses; kms tracks certificates for exactly one", res.Serial, len(c.EmailAddresses)))
		default:
			res.Certificate, ierr = s.opts.Certs.Import(r.Context(), c.Raw, actor(r))
		}
		if ierr != nil {
			st, code, msg := classify(ierr)
			res.Result, res.Error, res.Code = ImportRefused, msg, code
			if st >= 500 {
				res.Result = ImportFailed
				s.log.Error("admin api: import failed", "serial", res.Serial, "remote", r.RemoteAddr, "err", ierr)
			}
			if firstErr == nil || st >= 500 && status < 500 {
				firstErr, status = ierr, st
			}
		} else if res.Result == "" {
			res.Result = ImportImported
			imported++
		}
		resp.Results = append(resp.Results, res)
	}
	if firstErr == nil && imported == 0 {
		status = http.StatusBadRequest
		firstErr = badRequest(CodeBadCertificate, "the body holds only CA certificates: send the users' certificates")
	}
	if firstErr != nil {
		_, resp.Code, resp.Error = classify(firstErr)
		resp.Error = fmt.Sprintf("%d of %d certificates imported; first problem: %s", imported, len(certs), resp.Error)
	}
	writeJSON(w, status, resp)
	return nil
}

// parseBundle reads every certificate of a PEM bundle, or the one
// certificate of a DER body.
func parseBundle(data []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, badRequest(CodeBadCertificate, "the request body is empty: send the certificates as PEM or one as DER")
	}
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, badRequest(CodeBadCertificate, "the body is neither PEM nor a DER X.509 certificate: "+err.Error())
		}
		return []*x509.Certificate{c}, nil
	}
	var out []*x509.Certificate
	rest := data
	for n := 1; ; n++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			// Above all, a private key must not travel on: say so rather
			// than skip it silently.
			return nil, badRequest(CodeBadCertificate, fmt.Sprintf("PEM block %d is %q: send CERTIFICATE blocks only (never a private key)", n, b.Type))
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, badRequest(CodeBadCertificate, fmt.Sprintf("PEM block %d is not a valid X.509 certificate: %v", n, err))
		}
		if len(out) == maxImportCerts {
			return nil, badRequest(CodeBadCertificate, fmt.Sprintf("more than %d certificates: split the bundle", maxImportCerts))
		}
		out = append(out, c)
	}
	// pem.Decode passes over a block it cannot decode; counting the BEGIN
	// lines catches one damaged certificate in the middle of a bundle.
	if begins := bytes.Count(data, []byte("-----BEGIN ")); len(out) == 0 || begins != len(out) {
		return nil, badRequest(CodeBadCertificate, fmt.Sprintf("%d of %d PEM blocks could not be read: check their base64 and their -----BEGIN CERTIFICATE----- and -----END CERTIFICATE----- lines",
			begins-len(out), begins))
	}
	return out, nil
}

// pemCert encodes a DER certificate as PEM.
func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// pemDecode returns the DER of the first PEM block of s, or nil.
func pemDecode(s string) []byte {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil
	}
	return b.Bytes
}
