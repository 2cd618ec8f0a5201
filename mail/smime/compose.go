package smime

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"time"

	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Message is an outgoing KMS message: a reply, a reminder, a notice.
type Message struct {
	From mail.Address
	To   []mail.Address
	// Subject may hold any UTF-8; it is encoded per RFC 2047.
	Subject string
	// Date is the Date field and also the signingTime of the signature.
	Date time.Time
	// MessageID, InReplyTo and References are message IDs without angle
	// brackets. MessageID is required: the outbox chooses it, so that a
	// message sent twice after a crash is recognisably the same.
	MessageID  string
	InReplyTo  []string
	References []string
	// AutoSubmitted is the Auto-Submitted field (RFC 3834): "auto-replied"
	// for answers to requests, "auto-generated" (the default) otherwise.
	AutoSubmitted string
	// Text is the body for a person, UTF-8, any line ends.
	Text string
	// Certs, when not empty, makes the body multipart/mixed with an
	// `application/pkcs7-mime; smime-type=certs-only` attachment
	// (smime.p7c) holding them: the new certificate first, then its chain
	// (SPEC 4.3). They are also added to the signature's certificate set.
	Certs []*x509.Certificate
}

// Compose builds the complete signed message for m: RFC 5322 headers and a
// multipart/signed body (protocol application/pkcs7-signature, micalg
// sha-256) whose first part is the inner entity and whose second is
// SignDetached over exactly those bytes. Lines end in CRLF, are under 998
// octets, and the output is 7-bit.
func Compose(m Message, s Signer) ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	inner, err := m.innerEntity()
	if err != nil {
		return nil, err
	}
	sig, err := SignDetached(inner, s, m.Certs, m.Date)
	if err != nil {
		return nil, err
	}
	boundary, err := newBoundary()
	if err != nil {
		return nil, err
	}

	h := gomail.Header{}
	// go-message's Header.Add inserts at the top, so fields are added last
	// first.
	h.SetContentType("multipart/signed", map[string]string{
		"protocol": "application/pkcs7-signature", "micalg": "sha-256", "boundary": boundary})
	h.Set("MIME-Version", "1.0")
	auto := m.AutoSubmitted
	if auto == "" {
		auto = "auto-generated"
	}
	h.Set("Auto-Submitted", auto)
	h.SetMsgIDList("References", m.References)
	h.SetMsgIDList("In-Reply-To", m.InReplyTo)
	h.SetMessageID(m.MessageID)
	h.SetDate(m.Date)
	h.SetSubject(m.Subject)
	to := make([]*mail.Address, len(m.To))
	for i := range m.To {
		to[i] = &m.To[i]
	}
	h.SetAddressList("To", to)
	h.SetAddressList("From", []*mail.Address{&m.From})

	var b bytes.Buffer
	b.Grow(1024 + len(inner) + base64Len(len(sig)))
	if err := textproto.WriteHeader(&b, h.Header.Header); err != nil {
		return nil, fmt.Errorf("smime: writing header: %w", err)
	}
	b.WriteString("This is a cryptographically signed message in MIME format.\r\n\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.Write(inner)
	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: application/pkcs7-signature; name=smime.p7s\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=smime.p7s\r\n" +
		"Content-Description: S/MIME Cryptographic Signature\r\n\r\n")
	writeBase64(&b, sig)
	b.WriteString("--" + boundary + "--\r\n")
	return b.Bytes(), nil
}

func (m *Message) check() error {
	if m.Date.IsZero() {
		return errors.New("smime: Message.Date is zero; set it from the clock")
	}
	if m.MessageID == "" {
		return errors.New("smime: Message.MessageID is empty; the outbox must choose one")
	}
	if len(m.To) == 0 {
		return errors.New("smime: Message.To is empty")
	}
	ids := append(append([]string{m.MessageID}, m.InReplyTo...), m.References...)
	for _, id := range ids {
		if id == "" || strings.ContainsAny(id, "<> \t\r\n") || !isASCII([]byte(id)) {
			return fmt.Errorf("smime: message ID %q is not a bare id-left@id-right", id)
		}
	}
	addrs := append([]mail.Address{m.From}, m.To...)
	for _, a := range addrs {
		if _, err := mail.ParseAddress(a.Address); err != nil || !isASCII([]byte(a.Address)) {
			return fmt.Errorf("smime: address %q is not a plain ASCII mailbox", a.Address)
		}
	}
	if strings.ContainsAny(m.AutoSubmitted, "\r\n") {
		return errors.New("smime: Message.AutoSubmitted has a line break")
	}
	return nil
}

// innerEntity builds the signed entity: text/plain, or multipart/mixed with
// the text and the certs-only attachment. The text is always
// quoted-printable: that keeps the output 7-bit and its lines short, and
// protects trailing spaces, which some relays strip and which would break
// the signature.
func (m *Message) innerEntity() ([]byte, error) {
	var text bytes.Buffer
	text.Grow(128 + len(m.Text) + len(m.Text)/8) // headers, the text, soft line breaks and escapes
	text.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	qp := quotedprintable.NewWriter(&text)
	if _, err := qp.Write([]byte(strings.ReplaceAll(m.Text, "\r\n", "\n"))); err != nil {
		return nil, fmt.Errorf("smime: encoding text: %w", err)
	}
	if err := qp.Close(); err != nil {
		return nil, fmt.Errorf("smime: encoding text: %w", err)
	}
	if len(m.Certs) == 0 {
		return text.Bytes(), nil
	}
	p7c, err := CertsOnly(m.Certs...)
	if err != nil {
		return nil, err
	}
	boundary, err := newBoundary()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Grow(512 + text.Len() + base64Len(len(p7c)))
	b.WriteString("Content-Type: multipart/mixed; boundary=\"" + boundary + "\"\r\n\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.Write(text.Bytes())
	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: application/pkcs7-mime; smime-type=certs-only; name=smime.p7c\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=smime.p7c\r\n\r\n")
	writeBase64(&b, p7c)
	b.WriteString("--" + boundary + "--\r\n")
	return b.Bytes(), nil
}

// newBoundary returns a random multipart boundary. It contains "=_", which
// can occur in neither quoted-printable (where "=" starts an escape of two
// hex digits) nor base64 text, so it cannot collide with a part's content.
func newBoundary() (string, error) {
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("smime: boundary: %w", err)
	}
	return "=_kms_" + hex.EncodeToString(r[:]), nil
}

// writeBase64 writes b in base64 lines of 76 characters, each ending CRLF.
func writeBase64(w *bytes.Buffer, b []byte) {
	const lineBytes = 57 // 76 base64 characters
	w.Grow(base64Len(len(b)))
	if len(b) == 0 {
		w.WriteString("\r\n")
		return
	}
	var line [78]byte
	for len(b) > 0 {
		n := min(len(b), lineBytes)
		k := base64.StdEncoding.EncodedLen(n)
		base64.StdEncoding.Encode(line[:k], b[:n])
		line[k], line[k+1] = '\r', '\n'
		w.Write(line[:k+2])
		b = b[n:]
	}
}

// base64Len is the length writeBase64 writes for n bytes.
func base64Len(n int) int {
	lines := max((n+56)/57, 1)
	return base64.StdEncoding.EncodedLen(n) + 2*lines
}
