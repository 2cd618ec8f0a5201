package demo

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-message"

	"github.com/kmsmail/kms/mail/smime"
)

// ErrStepTimeout is returned when a step of the story, such as a mail kms
// should send, did not happen within its time.
var ErrStepTimeout = errors.New("step did not happen in time")

// ErrRefused is returned when kms refused a request the story expects it
// to honour.
var ErrRefused = errors.New("kms refused a request")

// mailKind is what a kms mail is about, told by its subject and content.
type mailKind int

const (
	kindOther mailKind = iota
	kindInvitation
	kindCertificate
	kindRenewal
	kindReminder
	kindLapse
	kindLapseAdmin
	kindRejection
)

// label names a kind of mail in the narration.
func (k mailKind) label() string {
	return [...]string{"a message", "an invitation", "a certificate", "a renewed certificate",
		"a reminder", "a lapse notice", "a lapse notice", "a rejection"}[k]
}

// received is one message kms delivered into the Maildir, its signature
// verified.
type received struct {
	to        string
	from      string
	subject   string
	messageID string
	kind      mailKind
	text      string              // the text/plain part, decoded
	certs     []*x509.Certificate // the smime.p7c part, if any
	nth       int                 // this is the nth mail of its kind to its recipient
	used      bool                // a step has consumed it
}

// trust is what the users trust: the kms root, from /ca.pem.
type trust struct {
	roots, intermediates *x509.CertPool
}

// fetchTrust downloads the CA chain kms publishes at /ca.pem, as an
// administrator would to hand it to mail clients.
func fetchTrust(ctx context.Context, adminURL string) (trust, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/ca.pem", nil)
	if err != nil {
		return trust{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return trust{}, fmt.Errorf("fetch the kms CA chain: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return trust{}, fmt.Errorf("fetch the kms CA chain from %s/ca.pem: HTTP %d %v", adminURL, resp.StatusCode, err)
	}
	t := trust{roots: x509.NewCertPool(), intermediates: x509.NewCertPool()}
	n := 0
	for block, rest := pem.Decode(body); block != nil; block, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return trust{}, fmt.Errorf("kms CA chain: %w", err)
		}
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			t.roots.AddCert(c)
			n++
		} else {
			t.intermediates.AddCert(c)
		}
	}
	if n == 0 {
		return trust{}, fmt.Errorf("kms CA chain from %s/ca.pem holds no root certificate", adminURL)
	}
	return t, nil
}

// mailbox follows the Maildir kms delivers into. It leaves the files
// where they are (in new/), so that with --keep a mail client shows them
// all as unread.
type mailbox struct {
	dir    string
	trust  trust
	seen   map[string]bool
	mails  []*received
	count  map[string]int // by recipient and kind
	onMail func(*received)
}

func newMailbox(dir string, t trust, onMail func(*received)) *mailbox {
	return &mailbox{dir: dir, trust: t, seen: map[string]bool{}, count: map[string]int{}, onMail: onMail}
}

// poll reads the messages delivered since the last poll, oldest first,
// and hands each to onMail.
func (mb *mailbox) poll() error {
	type file struct {
		path, key string
		mod       time.Time
	}
	var fresh []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(mb.dir, sub))
		if err != nil {
			return fmt.Errorf("read the kms Maildir: %w", err)
		}
		for _, e := range entries {
			// A reader that moves a message to cur/ appends ":2,FLAGS".
			key, _, _ := strings.Cut(e.Name(), ":")
			if mb.seen[key] {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue // moved meanwhile: the next poll finds it
			}
			fresh = append(fresh, file{filepath.Join(mb.dir, sub, e.Name()), key, info.ModTime()})
		}
	}
	sort.Slice(fresh, func(i, j int) bool {
		if !fresh[i].mod.Equal(fresh[j].mod) {
			return fresh[i].mod.Before(fresh[j].mod)
		}
		return fresh[i].key < fresh[j].key
	})
	for _, f := range fresh {
		raw, err := os.ReadFile(f.path)
		if err != nil {
			return fmt.Errorf("read mail from kms: %w", err)
		}
		m, err := mb.parse(raw, time.Now())
		if err != nil {
			return fmt.Errorf("mail from kms %s: %w", f.path, err)
		}
		mb.seen[f.key] = true
		k := m.to + "\x00" + fmt.Sprint(m.kind)
		mb.count[k]++
		m.nth = mb.count[k]
		mb.mails = append(mb.mails, m)
		mb.onMail(m)
	}
	return nil
}

// received counts the mails of kind kms sent to addr.
func (mb *mailbox) received(addr string, kind mailKind) int {
	return mb.count[addr+"\x00"+fmt.Sprint(kind)]
}

// parse reads one message and verifies its signature, as the users' mail
// client does: signed by kms, chaining to the kms root.
func (mb *mailbox) parse(raw []byte, now time.Time) (*received, error) {
	hdr, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	req, err := smime.ParseRequest(raw, smime.Limits{})
	if err != nil {
		return nil, err
	}
	v, err := req.Verify(smime.VerifyOptions{Roots: mb.trust.roots, Intermediates: mb.trust.intermediates, At: now})
	if err != nil {
		return nil, fmt.Errorf("signature does not verify: %w", err)
	}
	if !v.Signature.SignerHasAddress(KMSAddress) {
		return nil, fmt.Errorf("signed by %v, not by %s", v.Signature.Signer.EmailAddresses, KMSAddress)
	}
	to, err := hdr.Header.AddressList("To")
	if err != nil || len(to) != 1 {
		return nil, fmt.Errorf("the To field %q is not one address", hdr.Header.Get("To"))
	}
	m := &received{to: strings.ToLower(to[0].Address), from: req.From, subject: req.Subject, messageID: req.MessageID}
	if err := m.readBody(v.Signature.Content); err != nil {
		return nil, err
	}
	m.kind = kindOf(m)
	return m, nil
}

// readBody takes the text and the certs-only attachment out of the signed
// content.
func (m *received) readBody(content []byte) error {
	e, err := message.Read(bytes.NewReader(content))
	if err != nil && !message.IsUnknownCharset(err) {
		return fmt.Errorf("signed content: %w", err)
	}
	return e.Walk(func(_ []int, part *message.Entity, err error) error {
		if err != nil {
			return err
		}
		mt, params, _ := part.Header.ContentType()
		switch {
		case mt == "text/plain" && m.text == "":
			b, err := io.ReadAll(part.Body)
			m.text = strings.ReplaceAll(string(b), "\r\n", "\n")
			return err
		case mt == "application/pkcs7-mime" && strings.EqualFold(params["smime-type"], "certs-only"):
			b, err := io.ReadAll(part.Body)
			if err == nil {
				m.certs, err = smime.ParseCertsOnly(b)
			}
			return err
		}
		return nil
	})
}

// kindOf tells what a mail is about from its subject, as a person does.
func kindOf(m *received) mailKind {
	s := m.subject
	switch {
	case strings.HasPrefix(s, "Your renewed"):
		return kindRenewal
	case len(m.certs) > 0:
		return kindCertificate
	case strings.HasPrefix(s, "Your S/MIME certificate expires"):
		return kindReminder
	case strings.HasSuffix(s, "has expired"):
		return kindLapse
	case strings.HasPrefix(s, "S/MIME certificate lapsed"):
		return kindLapseAdmin
	case strings.Contains(s, "invited"):
		return kindInvitation
	case strings.HasPrefix(s, "Not accepted") || strings.Contains(s, "not accepted"):
		return kindRejection
	}
	return kindOther
}

// wait polls the Maildir until a mail of kind to addr arrives that no
// step has taken yet, and takes it. A rejection to addr ends the wait at
// once with ErrRefused: the story expected kms to honour the request.
func (mb *mailbox) wait(ctx context.Context, step, addr string, kind mailKind, timeout time.Duration) (*received, error) {
	deadline := time.Now().Add(timeout)
	for {
		if err := mb.poll(); err != nil {
			return nil, err
		}
		for _, m := range mb.mails {
			if m.used || m.to != addr {
				continue
			}
			if m.kind == kind {
				m.used = true
				return m, nil
			}
			if m.kind == kindRejection && kind != kindRejection {
				m.used = true
				return nil, fmt.Errorf("%w: waiting for %s, %s got %q: %s", ErrRefused, step, addr, m.subject, oneLine(m.text))
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %s: no %s to %s within %s", ErrStepTimeout, step, strings.TrimPrefix(strings.TrimPrefix(kind.label(), "an "), "a "), addr, timeout.Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// oneLine shortens a letter to its first sentences for an error message.
func oneLine(text string) string {
	s := strings.Join(strings.Fields(text), " ")
	s = strings.TrimPrefix(s, "Hello, ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
