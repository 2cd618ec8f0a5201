package mail

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	netmail "net/mail"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

// imapSession is one logged-in connection with the mailbox selected.
type imapSession struct {
	c       *imapclient.Client
	caps    imap.CapSet
	keyword bool          // the mailbox keeps imapFlagTooLarge
	wake    chan struct{} // the server announced a new message count
	stop    func() bool   // detaches the close-on-cancel hook
}

// connect dials, secures, logs in and selects the mailbox, within
// DialTimeout.
func (f *IMAPFetcher) connect(ctx context.Context) (*imapSession, error) {
	setup, cancel := context.WithTimeout(ctx, f.opt.DialTimeout)
	defer cancel()
	d := net.Dialer{}
	conn, err := d.DialContext(setup, "tcp", f.opt.Addr)
	if err != nil {
		return nil, f.fail(imapErrConnect, fmt.Errorf("imap %s: connect: %w", f.opt.Addr, err))
	}
	// imapclient takes no context and sets its own deadlines; closing the
	// connection is what makes a context bound a command.
	stopSetup := context.AfterFunc(setup, func() { conn.Close() })
	s, err := f.open(conn)
	if !stopSetup() && err == nil {
		// Done just as the deadline closed the connection.
		s.c.Close()
		err = f.fail(imapErrConnect, fmt.Errorf("imap %s: %w", f.opt.Addr, setup.Err()))
	}
	if err != nil {
		conn.Close()
		if setup.Err() != nil && ctx.Err() == nil {
			// The deadline closed the connection: say so, since the error
			// itself reads "use of closed network connection".
			err = fmt.Errorf("%w; no answer within %v (is the port right? %s)", err, f.opt.DialTimeout, f.portHint())
		}
		return nil, err
	}
	s.stop = context.AfterFunc(ctx, func() { s.c.Close() })
	return s, nil
}

// portHint names the likely mix-up when a session will not even start.
func (f *IMAPFetcher) portHint() string {
	if f.security == IMAPImplicitTLS {
		return "implicit TLS is for port 993; port 143 wants STARTTLS"
	}
	return "STARTTLS is spoken to port 143; use port 993 for implicit TLS"
}

// open runs the session's setup on conn: TLS, greeting, login, SELECT.
func (f *IMAPFetcher) open(conn net.Conn) (*imapSession, error) {
	s := &imapSession{wake: make(chan struct{}, 1)}
	opts := &imapclient.Options{
		TLSConfig: f.tls,
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			// Called from imapclient's reader: it must not block.
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					select {
					case s.wake <- struct{}{}:
					default:
					}
				}
			},
		},
	}
	var err error
	if f.security == IMAPImplicitTLS {
		cfg := f.tls.Clone()
		if cfg.NextProtos == nil {
			cfg.NextProtos = []string{"imap"}
		}
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			return nil, f.fail(imapErrConnect, fmt.Errorf("imap %s: TLS (%s): %w", f.opt.Addr, f.portHint(), err))
		}
		s.c = imapclient.New(tc, opts)
		err = s.c.WaitGreeting()
	} else {
		// NewStartTLS fails, before anything else is sent, if the server
		// will not upgrade: the password is never sent in clear.
		s.c, err = imapclient.NewStartTLS(conn, opts)
	}
	if err != nil {
		return nil, f.fail(imapErrConnect, fmt.Errorf("imap %s: greeting or STARTTLS (%s): %w", f.opt.Addr, f.portHint(), err))
	}
	if err := f.login(s.c); err != nil {
		s.c.Close()
		return nil, err
	}
	if err := f.selectMailbox(s); err != nil {
		s.c.Close()
		return nil, err
	}
	return s, nil
}

// login authenticates with LOGIN, or AUTHENTICATE PLAIN where the server
// disables LOGIN; both run inside TLS.
func (f *IMAPFetcher) login(c *imapclient.Client) error {
	var err error
	if c.Caps().Has(imap.CapLoginDisabled) {
		err = c.Authenticate(sasl.NewPlainClient("", f.opt.Username, string(f.opt.Password)))
	} else {
		err = c.Login(f.opt.Username, string(f.opt.Password)).Wait()
	}
	if err == nil {
		return nil
	}
	if imapRefused(err) {
		return f.fail(imapErrLogin, fmt.Errorf("imap %s: login as %q: %w (%w)", f.opt.Addr, f.opt.Username, ErrIMAPLogin, err))
	}
	return f.fail(imapErrConnect, fmt.Errorf("imap %s: login: %w", f.opt.Addr, err))
}

// selectMailbox makes sure DoneFolder exists and selects Mailbox.
func (f *IMAPFetcher) selectMailbox(s *imapSession) error {
	mailboxErr := func(what string, err error) error {
		if imapRefused(err) {
			return f.fail(imapErrMailbox, fmt.Errorf("imap %s: %s: %w (%w)", f.opt.Addr, what, ErrIMAPMailbox, err))
		}
		return f.fail(imapErrConnect, fmt.Errorf("imap %s: %s: %w", f.opt.Addr, what, err))
	}
	if f.opt.DoneFolder != "" {
		found, err := s.c.List("", f.opt.DoneFolder, nil).Collect()
		if err != nil {
			return mailboxErr("list "+f.opt.DoneFolder, err)
		}
		if len(found) == 0 {
			if err := s.c.Create(f.opt.DoneFolder, nil).Wait(); err != nil {
				return mailboxErr("create "+f.opt.DoneFolder, err)
			}
			f.opt.Log.Info("imap: created the folder for fetched messages", "folder", f.opt.DoneFolder)
		}
	}
	data, err := s.c.Select(f.opt.Mailbox, nil).Wait()
	if err != nil {
		return mailboxErr("select "+f.opt.Mailbox, err)
	}
	s.caps = s.c.Caps()
	if data.NumMessages > 0 {
		// A session cut between marking a stored message \Deleted and
		// expunging it leaves it marked, and every search skips it: it
		// would stay in the mailbox for good. EXPUNGE finishes such
		// removals (and removes what other clients marked \Deleted,
		// which is what they asked for).
		if err := s.c.Expunge().Close(); err != nil && !imapRefused(err) {
			return mailboxErr("expunge "+f.opt.Mailbox, err)
		}
	}
	s.keyword = slices.Contains(data.PermanentFlags, imap.FlagWildcard) || slices.Contains(data.PermanentFlags, imapFlagTooLarge)
	if data.UIDValidity != f.uidValidity {
		// The UIDs set aside belong to the mailbox's previous life.
		f.uidValidity, f.skipped = data.UIDValidity, map[imap.UID]bool{}
	}
	return nil
}

// imapRefused reports whether err is the server's NO or BAD, as opposed
// to a failed connection.
func imapRefused(err error) bool {
	var ie *imap.Error
	return errors.As(err, &ie) && (ie.Type == imap.StatusResponseTypeNo || ie.Type == imap.StatusResponseTypeBad)
}

func (s *imapSession) close() {
	s.stop()
	s.c.Close()
}

// logout ends the session politely; its failure changes nothing, since
// every message was settled before.
func (s *imapSession) logout() {
	_ = s.c.Logout().Wait()
}

// pass handles every message in the mailbox, oldest first, and returns how
// many it newly stored. A message the server refuses to hand over or to
// remove is skipped; a failed connection or store ends the pass.
func (f *IMAPFetcher) pass(ctx context.Context, s *imapSession) (int, error) {
	// Announcements from here on are for the next wait.
	select {
	case <-s.wake:
	default:
	}
	found, err := s.c.UIDSearch(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagDeleted, imapFlagTooLarge}}, nil).Wait()
	if err != nil {
		return 0, f.fail(imapErrSearch, fmt.Errorf("imap %s: search %s: %w", f.opt.Addr, f.opt.Mailbox, err))
	}
	uids := found.AllUIDs()
	if len(uids) == 0 {
		return 0, nil
	}
	// Sizes first, so that an oversized message is never downloaded.
	sizes, err := s.c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
	if err != nil {
		return 0, f.fail(imapErrSearch, fmt.Errorf("imap %s: fetch sizes: %w", f.opt.Addr, err))
	}
	slices.SortFunc(sizes, func(a, b *imapclient.FetchMessageBuffer) int { return cmp.Compare(a.UID, b.UID) })
	stored := 0
	for _, m := range sizes {
		if err := ctx.Err(); err != nil {
			return stored, err
		}
		if m.UID == 0 || f.skipped[m.UID] {
			continue
		}
		var n int
		if m.RFC822Size > f.opt.MaxMessageBytes {
			err = f.setAside(s, m.UID, m.RFC822Size)
		} else {
			n, err = f.take(ctx, s, m.UID)
		}
		stored += n
		if err != nil && !imapRefused(err) {
			return stored, err
		}
	}
	return stored, nil
}

// take fetches one message, stores it, and removes it from the mailbox. It
// returns 1 if the message was new to the store.
func (f *IMAPFetcher) take(ctx context.Context, s *imapSession, uid imap.UID) (int, error) {
	log := f.opt.Log.With("addr", f.opt.Addr, "mailbox", f.opt.Mailbox, "uid", uint32(uid))
	raw, size, err := f.fetchBody(s, uid)
	if err != nil {
		err = f.fail(imapErrFetch, fmt.Errorf("imap %s: fetch message %d: %w", f.opt.Addr, uid, err))
		if imapRefused(err) {
			log.Error("imap: the server refused a message; skipped, will retry next pass", "err", err)
		}
		return 0, err
	}
	if size > f.opt.MaxMessageBytes {
		// RFC822.SIZE understated it; the body was read past, not kept.
		return 0, f.setAside(s, uid, size)
	}
	if raw == nil {
		log.Info("imap: message gone before it was fetched (another client removed it)")
		return 0, nil
	}
	from := envelopeSender(raw)
	id, dup, err := f.opt.Store.AcceptInbound(ctx, raw, from, f.remote, f.opt.Clock.Now())
	if err != nil {
		// Left in the mailbox: the next pass fetches it again.
		return 0, f.fail(imapErrStore, fmt.Errorf("imap: store message %d from %s: %w", uid, f.opt.Addr, err))
	}
	log = log.With("inbound_id", id, "bytes", len(raw), "mail_from", from)
	n := 0
	if dup {
		f.m.duplicate.Inc()
		log.Info("imap: message fetched again; already stored, removing it")
	} else {
		n = 1
		f.m.fetched.Inc()
		log.Info("imap: message fetched and stored")
		f.opt.Notify()
	}
	if f.afterStore != nil {
		f.afterStore()
	}
	if err := f.remove(s, uid); err != nil {
		err = f.fail(imapErrRemove, fmt.Errorf("imap %s: remove stored message %d: %w", f.opt.Addr, uid, err))
		if imapRefused(err) {
			log.Error("imap: cannot remove a stored message from the mailbox; it will be fetched again and recognised as a duplicate", "err", err)
		}
		return n, err
	}
	return n, nil
}

// fetchBody downloads one message whole, unless the literal the server
// sends is over the limit: then it is discarded as it is read and only its
// size returned. raw is nil if the message no longer exists.
func (f *IMAPFetcher) fetchBody(s *imapSession, uid imap.UID) (raw []byte, size int64, err error) {
	cmd := s.c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	defer cmd.Close()
	if msg := cmd.Next(); msg != nil {
		for item := msg.Next(); item != nil; item = msg.Next() {
			body, ok := item.(imapclient.FetchItemDataBodySection)
			if !ok || body.Literal == nil {
				continue
			}
			if size = body.Literal.Size(); size > f.opt.MaxMessageBytes {
				continue // the next msg.Next discards it
			}
			raw, err = io.ReadAll(io.LimitReader(body.Literal, f.opt.MaxMessageBytes))
			if err != nil {
				break
			}
		}
	}
	if cerr := cmd.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, 0, err
	}
	return raw, size, nil
}

// remove takes a stored message out of the mailbox: into DoneFolder, or
// deleted.
func (f *IMAPFetcher) remove(s *imapSession, uid imap.UID) error {
	set := imap.UIDSetNum(uid)
	if f.opt.DoneFolder != "" {
		if s.caps.Has(imap.CapMove) {
			_, err := s.c.Move(set, f.opt.DoneFolder).Wait()
			return err
		}
		// Not imapclient's own fallback: it pipelines COPY, STORE and
		// EXPUNGE, so a refused COPY (over quota) would still delete.
		if _, err := s.c.Copy(set, f.opt.DoneFolder).Wait(); err != nil {
			return err
		}
	}
	deleted := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
	if err := s.c.Store(set, deleted, nil).Close(); err != nil {
		return err
	}
	if s.caps.Has(imap.CapUIDPlus) {
		return s.c.UIDExpunge(set).Close()
	}
	// Without UIDPLUS, EXPUNGE also removes what other clients marked
	// \Deleted, which is what they asked for; a message only marked (a
	// crash before this line) is already excluded from every search.
	return s.c.Expunge().Close()
}

// setAside flags an oversized message so that later passes skip it, and
// remembers it in case the server does not keep the keyword.
func (f *IMAPFetcher) setAside(s *imapSession, uid imap.UID, size int64) error {
	f.skipped[uid] = true
	f.m.errors.WithLabelValues(imapErrTooLarge).Inc()
	f.opt.Log.Warn("imap: message too large; not fetched, flagged and left in the mailbox for an administrator",
		"addr", f.opt.Addr, "mailbox", f.opt.Mailbox, "uid", uint32(uid), "bytes", size, "max_bytes", f.opt.MaxMessageBytes)
	flags := []imap.Flag{imap.FlagFlagged}
	if s.keyword {
		flags = append(flags, imapFlagTooLarge)
	}
	err := s.c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: flags}, nil).Close()
	if err != nil {
		err = f.fail(imapErrRemove, fmt.Errorf("imap %s: flag oversized message %d: %w", f.opt.Addr, uid, err))
		if imapRefused(err) {
			f.opt.Log.Error("imap: cannot flag an oversized message", "uid", uint32(uid), "err", err)
		}
	}
	return err
}

// wait returns when the next pass is due: after PollInterval, or sooner
// when a server with IDLE announces new mail.
func (f *IMAPFetcher) wait(ctx context.Context, s *imapSession) error {
	t := time.NewTimer(f.opt.PollInterval)
	defer t.Stop()
	if !s.caps.Has(imap.CapIdle) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.c.Closed():
			return f.fail(imapErrConnect, fmt.Errorf("imap %s: the server closed the connection", f.opt.Addr))
		case <-t.C:
			return nil
		}
	}
	idle, err := s.c.Idle()
	if err != nil {
		return f.fail(imapErrConnect, fmt.Errorf("imap %s: IDLE: %w", f.opt.Addr, err))
	}
	select {
	case <-ctx.Done():
	case <-s.c.Closed():
	case <-s.wake:
	case <-t.C:
	}
	err = idle.Close()
	if err == nil {
		err = idle.Wait()
	}
	if ctx.Err() != nil {
		// The failure is the close on cancel: a shutdown, not an error.
		return ctx.Err()
	}
	if err != nil {
		return f.fail(imapErrConnect, fmt.Errorf("imap %s: IDLE: %w", f.opt.Addr, err))
	}
	return nil
}

// envelopeSender is the sender a fetched message is stored with (see
// IMAPFetcher): the topmost Return-Path, else the first From address; ""
// for a null Return-Path or when neither gives an address.
func envelopeSender(raw []byte) string {
	msg, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return ""
	}
	if rp, ok := msg.Header["Return-Path"]; ok && len(rp) > 0 {
		v := strings.TrimSpace(rp[0])
		if strings.HasPrefix(v, "<") {
			if end := strings.IndexByte(v, '>'); end > 0 {
				v = v[1:end]
			}
		}
		// A source route (<@relay:user@host>, RFC 5321 section 4.1.2).
		if i := strings.IndexByte(v, ':'); strings.HasPrefix(v, "@") && i > 0 {
			v = v[i+1:]
		}
		if v = strings.TrimSpace(v); v == "" {
			return ""
		}
		if a, err := netmail.ParseAddress(v); err == nil {
			return a.Address
		}
	}
	from, err := msg.Header.AddressList("From")
	if err != nil || len(from) == 0 {
		return ""
	}
	return from[0].Address
}
