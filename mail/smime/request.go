package smime

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-message/mail"
)

// Kind says how a request body is protected.
type Kind int

// The kinds of request body.
const (
	// KindUnsigned is a body with no S/MIME protection (or one this package
	// does not check, such as a PGP signature).
	KindUnsigned Kind = iota + 1
	// KindSigned is multipart/signed with an application/pkcs7-signature
	// (or x-pkcs7-signature) detached signature: what mail clients send.
	KindSigned
	// KindSignedOpaque is application/pkcs7-mime with smime-type=signed-data.
	KindSignedOpaque
	// KindEnveloped is application/pkcs7-mime with smime-type=enveloped-data
	// (or authEnveloped-data): call Decrypt.
	KindEnveloped
)

// String names the kind for logs.
func (k Kind) String() string {
	switch k {
	case KindUnsigned:
		return "unsigned"
	case KindSigned:
		return "signed (multipart/signed)"
	case KindSignedOpaque:
		return "signed (opaque)"
	case KindEnveloped:
		return "enveloped"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Request is a parsed inbound message. Its header fields are the sender's
// claims: authentication rests on Verify (a signature) or on an enrollment
// code in a CSR, never on them.
type Request struct {
	// From is the address (addr-spec) of the single From mailbox.
	From string
	// MessageID is the Message-ID without angle brackets, "" if absent.
	MessageID string
	// InReplyTo and References are message IDs without angle brackets.
	InReplyTo  []string
	References []string
	// AutoSubmitted is the Auto-Submitted field (RFC 3834) in lower case,
	// "" if absent. See IsAutoSubmitted.
	AutoSubmitted string
	// Subject is the decoded Subject.
	Subject string
	// ContentType is the media type of the message, in lower case.
	ContentType string
	// Kind says how the body is protected. A Request returned by Decrypt
	// has the kind of the decrypted content.
	Kind Kind
	// Encrypted is true for a Request returned by Decrypt.
	Encrypted bool

	limits Limits
	depth  int    // layers already unwrapped
	entity []byte // KindUnsigned: the entity holding the content
	signed []byte // KindSigned: the first part, as received
	cms    []byte // KindSigned: the signature; KindSignedOpaque, KindEnveloped: the CMS object
}

// IsAutoSubmitted reports whether the message says it was sent by a
// program (Auto-Submitted other than "no"); such mail should not be
// answered, to avoid mail loops.
func (r *Request) IsAutoSubmitted() bool {
	return r.AutoSubmitted != "" && r.AutoSubmitted != "no"
}

// ParseRequest parses an RFC 5322 message (CRLF or LF line ends) within
// lim and classifies its body. It reads the headers and finds the
// signature or the encrypted content, but checks nothing cryptographic:
// call Verify, Decrypt or UnverifiedContent next, by Kind. The Request
// refers to raw, which must not change while the Request is in use.
func ParseRequest(raw []byte, lim Limits) (*Request, error) {
	lim = lim.withDefaults()
	if len(raw) > lim.MaxMessageBytes {
		return nil, fmt.Errorf("%w: message of %d bytes, the limit is %d", ErrLimit, len(raw), lim.MaxMessageBytes)
	}
	e, err := readEntity(raw, lim)
	if err != nil {
		return nil, err
	}
	h := mail.Header{Header: e.header}
	r := &Request{limits: lim, ContentType: e.mediaType}
	from, err := h.AddressList("From")
	if err != nil {
		return nil, fmt.Errorf("%w: From: %v", ErrMalformed, err)
	}
	if len(from) != 1 {
		return nil, fmt.Errorf("%w: From has %d addresses; want one", ErrMalformed, len(from))
	}
	r.From = from[0].Address
	// Identifiers and the subject are informational: a malformed one is
	// dropped rather than refusing the message.
	r.MessageID, _ = h.MessageID()
	r.InReplyTo, _ = h.MsgIDList("In-Reply-To")
	r.References, _ = h.MsgIDList("References")
	r.Subject, _ = h.Subject()
	r.AutoSubmitted = strings.ToLower(strings.TrimSpace(strings.SplitN(h.Get("Auto-Submitted"), ";", 2)[0]))
	if err := r.classify(e, raw); err != nil {
		return nil, err
	}
	return r, nil
}

// classify sets Kind and the raw pieces from the top entity e (whose raw
// bytes are raw).
func (r *Request) classify(e *entity, raw []byte) error {
	switch e.mediaType {
	case "multipart/signed":
		proto := strings.ToLower(e.params["protocol"])
		if proto != "application/pkcs7-signature" && proto != "application/x-pkcs7-signature" {
			break // not S/MIME: read as unsigned
		}
		parts, err := splitMultipart(e.body, e.params["boundary"], r.limits.MaxParts)
		if err != nil {
			return err
		}
		if len(parts) != 2 {
			return fmt.Errorf("%w: multipart/signed has %d parts; want 2", ErrMalformed, len(parts))
		}
		sigPart, err := readEntity(parts[1], r.limits)
		if err != nil {
			return err
		}
		if sigPart.mediaType != "application/pkcs7-signature" && sigPart.mediaType != "application/x-pkcs7-signature" {
			return fmt.Errorf("%w: multipart/signed second part is %s, not application/pkcs7-signature", ErrMalformed, sigPart.mediaType)
		}
		if r.cms, err = sigPart.decodedBody(); err != nil {
			return err
		}
		r.Kind, r.signed = KindSigned, parts[0]
		return nil
	case "application/pkcs7-mime", "application/x-pkcs7-mime", "application/octet-stream":
		if e.mediaType == "application/octet-stream" && !strings.HasSuffix(strings.ToLower(e.params["name"]), ".p7m") {
			break
		}
		der, err := e.decodedBody()
		if err != nil {
			return err
		}
		kind, err := cmsKind(strings.ToLower(e.params["smime-type"]), der)
		if err != nil {
			return err
		}
		if kind != KindUnsigned {
			r.Kind, r.cms = kind, der
			return nil
		}
	}
	r.Kind, r.entity = KindUnsigned, raw
	return nil
}

// cmsKind tells signed from enveloped CMS, by smime-type or, when that is
// missing (older clients), by the CMS content type. certs-only is
// KindUnsigned: it carries no request.
func cmsKind(smimeType string, der []byte) (Kind, error) {
	switch smimeType {
	case "signed-data":
		return KindSignedOpaque, nil
	case "enveloped-data", "authenveloped-data":
		return KindEnveloped, nil
	case "certs-only":
		return KindUnsigned, nil
	}
	_, ctype, err := toDER(der)
	if err != nil {
		return 0, err
	}
	switch {
	case ctype.Equal(oidSignedData):
		return KindSignedOpaque, nil
	case ctype.Equal(oidEnvelopedData), ctype.Equal(oidAuthEnveloped):
		return KindEnveloped, nil
	}
	return 0, fmt.Errorf("%w: application/pkcs7-mime with CMS content type %s", ErrUnsupported, ctype)
}

// Verified is a request whose signature checked out.
type Verified struct {
	// Signature describes the signer and identifies the signature.
	Signature *Signature
	// Content is what the signature covers.
	Content *Content
}

// Verify checks the signature of a KindSigned or KindSignedOpaque request
// and parses the signed content. A multipart/signed signature is checked
// over the first part exactly as received; only if that fails and the part
// has bare LF line ends (a store or tool that dropped the CRs) is it
// checked again with CRLF restored. Other kinds give ErrNotSigned (or
// ErrEncrypted).
func (r *Request) Verify(opts VerifyOptions) (*Verified, error) {
	var sig *Signature
	var err error
	switch r.Kind {
	case KindSigned:
		sig, err = VerifyDetached(r.cms, r.signed, opts)
		if errors.Is(err, ErrBadSignature) && hasBareLF(r.signed) {
			if s2, err2 := VerifyDetached(r.cms, toCRLF(r.signed), opts); err2 == nil || !errors.Is(err2, ErrBadSignature) {
				sig, err = s2, err2
			}
		}
	case KindSignedOpaque:
		sig, err = VerifyOpaque(r.cms, opts)
	case KindEnveloped:
		return nil, fmt.Errorf("%w: decrypt it before verifying", ErrEncrypted)
	default:
		return nil, fmt.Errorf("%w: message body is %s", ErrNotSigned, r.ContentType)
	}
	if err != nil {
		return nil, err
	}
	c, err := parseContent(sig.Content, r.limits, r.depth+1)
	if err != nil {
		return nil, err
	}
	return &Verified{Signature: sig, Content: c}, nil
}

// UnverifiedContent parses the content of a request without checking any
// signature it has. It is for requests that something else authenticates
// (an enrollment request, whose CSR carries a one-time code); a renewal
// must use Verify. It gives ErrEncrypted for KindEnveloped.
func (r *Request) UnverifiedContent() (*Content, error) {
	switch r.Kind {
	case KindSigned:
		return parseContent(r.signed, r.limits, r.depth+1)
	case KindSignedOpaque:
		sd, err := parseSigned(r.cms)
		if err != nil {
			return nil, err
		}
		return parseContent(sd.content, r.limits, r.depth+1)
	case KindEnveloped:
		return nil, fmt.Errorf("%w: call Decrypt first", ErrEncrypted)
	default:
		return parseContent(r.entity, r.limits, r.depth)
	}
}

// Decrypt decrypts a KindEnveloped request with the KMS certificate and
// key, and returns the request the plaintext holds: the same header
// fields, Encrypted set, and the Kind of the inner entity (often
// KindSigned: mail clients sign, then encrypt).
func (r *Request) Decrypt(cert *x509.Certificate, key crypto.Decrypter) (*Request, error) {
	if r.Kind != KindEnveloped {
		return nil, fmt.Errorf("smime: Decrypt called on a %s request", r.Kind)
	}
	if r.depth+1 > r.limits.MaxDepth {
		return nil, fmt.Errorf("%w: more than %d nested layers", ErrLimit, r.limits.MaxDepth)
	}
	plain, err := Decrypt(r.cms, cert, key)
	if err != nil {
		return nil, err
	}
	e, err := readEntity(plain, r.limits)
	if err != nil {
		return nil, err
	}
	inner := *r
	inner.Encrypted, inner.depth = true, r.depth+1
	inner.entity, inner.signed, inner.cms = nil, nil, nil
	if err := inner.classify(e, plain); err != nil {
		return nil, err
	}
	return &inner, nil
}
