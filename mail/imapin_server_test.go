package mail

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

const (
	imapUser     = "kms"
	imapPassword = "s3cret-imap-pw"
)

// Capability sets the tests run the fetcher against: a modern server, and
// a plain IMAP4rev1 one without UIDPLUS or MOVE, which exercises EXPUNGE
// and the COPY-then-delete path.
var (
	imapRev2 = imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}}
	imapRev1 = imap.CapSet{imap.CapIMAP4rev1: {}}
)

// imapTestServer is a real IMAP server (go-imap's imapserver with the
// in-memory backend) on loopback. Its mailboxes outlive a restart, so a
// test can drop every connection and bring the server back on the same
// address, as a crash of the network or the server would.
type imapTestServer struct {
	served   chan struct{} // closed when Serve has returned
	t        testing.TB
	user     *imapmemserver.User
	mem      *imapmemserver.Server
	cert     tls.Certificate
	pool     *x509.CertPool
	caps     imap.CapSet
	implicit bool // TLS from the first byte; else STARTTLS
	noTLS    bool // offers no STARTTLS at all (but allows LOGIN in clear)
	addr     string
	srv      *imapserver.Server
	ln       net.Listener
	wire     *syncBuffer // everything the server read and wrote
}

func newIMAPServer(t testing.TB, caps imap.CapSet, implicit bool) *imapTestServer {
	t.Helper()
	s := &imapTestServer{t: t, mem: imapmemserver.New(), caps: caps, implicit: implicit, addr: "127.0.0.1:0", wire: &syncBuffer{}}
	s.cert, s.pool = selfSigned(t)
	s.user = imapmemserver.NewUser(imapUser, imapPassword)
	if err := s.user.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	s.mem.AddUser(s.user)
	s.start()
	t.Cleanup(s.stop)
	return s
}

// start listens on s.addr (the address of the previous run after a stop).
func (s *imapTestServer) start() {
	s.t.Helper()
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{s.cert}}
	opt := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return s.mem.NewSession(), nil, nil
		},
		Caps:        s.caps,
		Logger:      discardPrinter{}, // the connections tests drop on purpose would fill it
		DebugWriter: s.wire,
	}
	var ln net.Listener
	var err error
	switch {
	case s.noTLS:
		opt.InsecureAuth = true
		ln, err = net.Listen("tcp", s.addr)
	case s.implicit:
		ln, err = tls.Listen("tcp", s.addr, tlsConfig)
	default:
		opt.TLSConfig = tlsConfig
		ln, err = net.Listen("tcp", s.addr)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr, s.ln = ln.Addr().String(), ln
	s.srv = imapserver.New(opt)
	s.served = make(chan struct{})
	go func() {
		s.srv.Serve(ln)
		close(s.served)
	}()
}

// stop closes the listener and every connection at once. The listener is
// closed here too: Server.Close misses one that Serve has not yet taken up.
func (s *imapTestServer) stop() {
	s.ln.Close()
	// Serve must have returned before Close: imapserver's Close and a
	// Serve still starting touch the same field (a data race under -race).
	<-s.served
	s.srv.Close()
}

func (s *imapTestServer) security() IMAPSecurity {
	if s.implicit {
		return IMAPImplicitTLS
	}
	return IMAPStartTLS
}

// appendMsg puts raw into mailbox as a delivery agent would.
func (s *imapTestServer) appendMsg(mailbox string, raw []byte) {
	s.t.Helper()
	if _, err := s.user.Append(mailbox, bytes.NewReader(raw), &imap.AppendOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

// imapListed is one message as a mail client sees it.
type imapListed struct {
	uid   imap.UID
	flags []imap.Flag
	raw   []byte
}

// has reports whether m carries flag f; flags compare case-insensitively
// (RFC 3501 section 2.3.2), and servers may change a keyword's case.
func (m imapListed) has(f imap.Flag) bool {
	return slices.ContainsFunc(m.flags, func(g imap.Flag) bool { return strings.EqualFold(string(f), string(g)) })
}

// list reads mailbox with an independent client, read-only.
func (s *imapTestServer) list(mailbox string) []imapListed {
	s.t.Helper()
	opts := &imapclient.Options{TLSConfig: &tls.Config{RootCAs: s.pool}}
	var c *imapclient.Client
	var err error
	switch {
	case s.noTLS:
		c, err = imapclient.DialInsecure(s.addr, opts)
	case s.implicit:
		c, err = imapclient.DialTLS(s.addr, opts)
	default:
		c, err = imapclient.DialStartTLS(s.addr, opts)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(imapUser, imapPassword).Wait(); err != nil {
		s.t.Fatal(err)
	}
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		s.t.Fatalf("select %s: %v", mailbox, err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: sel.NumMessages}}, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		s.t.Fatal(err)
	}
	var out []imapListed
	for _, m := range msgs {
		l := imapListed{uid: m.UID, flags: m.Flags}
		if len(m.BodySection) > 0 {
			l.raw = m.BodySection[0].Bytes
		}
		out = append(out, l)
	}
	return out
}

// imapTestMsg is a small request-like message; extra is added to its
// header (a Return-Path, a From).
func imapTestMsg(n int, extra string) []byte {
	return fmt.Appendf(nil, "%sTo: %s\r\nSubject: request %d\r\nMessage-ID: <req%d@example.com>\r\n\r\nbody of request %d\r\n",
		extra, kmsAddr, n, n, n)
}
