package mail

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/kmsmail/kms/enroll"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/mail/smime"
	"github.com/kmsmail/kms/policy"
)

// signed handles a signed message: a renewal or rekey when the signer is a
// certificate kms tracks, otherwise perhaps an enrollment request that a
// mail client signed with some other certificate.
func (p *Processor) signed(ctx context.Context, r request, log *slog.Logger) error {
	svc := p.opt.Service
	// The signer's record, looked up once: during the verification (a
	// certificate kms issued needs no second check of its CA signature)
	// and for the request after it.
	var signerRaw []byte
	var signerRec *kms.Certificate
	var signerErr error
	issuedByKMS := func(c *x509.Certificate) bool {
		signerRaw = c.Raw
		signerRec, signerErr = svc.CertForSigner(ctx, c.Raw)
		return signerErr == nil && !signerRec.Imported
	}
	v, err := r.msg.Verify(smime.VerifyOptions{Roots: p.opt.Roots, Intermediates: p.opt.Intermediates, At: r.in.ReceivedAt,
		Cache: p.chains, Issued: issuedByKMS})
	if err != nil {
		var expired *smime.SignerExpiredError
		if errors.As(err, &expired) {
			if c, cerr := svc.CertForSigner(ctx, expired.Signer.Raw); cerr == nil {
				return p.lapseNotice(ctx, r, c, log)
			}
		}
		if errors.Is(err, smime.ErrUntrustedSigner) {
			// Not signed by a CA kms trusts: only an enrollment code can
			// authenticate this message.
			return p.enrollment(ctx, r, nil, log)
		}
		if errors.Is(err, smime.ErrBadCSR) {
			return p.refuse(ctx, r, r.msg.From, "bad_csr",
				"The certificate request in your message is not valid ("+plainError(err)+"). Make a new request and send it again.", err, log)
		}
		if errors.Is(err, smime.ErrMalformed) || errors.Is(err, smime.ErrLimit) {
			return p.refuse(ctx, r, r.msg.From, "unreadable", "kms could not read your message: "+plainError(err)+".", err, log)
		}
		return p.refuse(ctx, r, r.msg.From, "bad_signature",
			"The digital signature on your message could not be verified ("+plainError(err)+"). Sign the message with your current kms certificate and send it again.", err, log)
	}
	cert, err := signerRec, signerErr
	if !bytes.Equal(signerRaw, v.Signature.Signer.Raw) {
		cert, err = svc.CertForSigner(ctx, v.Signature.Signer.Raw)
	}
	if errors.Is(err, kms.ErrNotFound) {
		return p.enrollment(ctx, r, v.Content, log)
	}
	if err != nil {
		return err
	}
	log = log.With("signer_serial", cert.Serial, "user", cert.Email)
	if !certNames(v.Signature.Signer.EmailAddresses, cert.Email) {
		// A tracked certificate whose address is not the user's on record
		// proves nothing about that user (SPEC 4.2).
		return p.drop(ctx, r.in, fmt.Sprintf("signer certificate names %v, not %s on record", v.Signature.Signer.EmailAddresses, cert.Email), log)
	}
	if !strings.EqualFold(r.msg.From, cert.Email) {
		return p.refuse(ctx, r, cert.Email, "from_mismatch",
			fmt.Sprintf("The message was signed with the certificate of %s but sent from %s. Send renewal requests from the address the certificate names.", cert.Email, r.msg.From),
			fmt.Errorf("sender %s differs from signer %s", r.msg.From, cert.Email), log)
	}
	csrs := v.Content.CSRs
	if len(csrs) > 1 {
		return p.refuse(ctx, r, cert.Email, "several_csrs",
			fmt.Sprintf("The message carries %d certificate requests; send one.", len(csrs)), errors.New("several CSRs"), log)
	}
	req := kms.Request{Actor: "mail:" + cert.Email, MessageID: r.messageID, Subject: r.msg.Subject,
		SignatureDigest: v.Signature.ReplayID[:], InboundID: r.in.ID, Answers: p.answers(ctx, r.msg.InReplyTo), Signer: cert}
	if req.Answers != "" {
		log = log.With("answers", req.Answers)
	}
	var issued *kms.Certificate
	if len(csrs) == 1 {
		issued, err = svc.Rekey(ctx, cert.Serial, csrs[0].Request.PublicKey, req)
	} else {
		issued, err = svc.Renew(ctx, cert.Serial, req)
	}
	return p.outcome(ctx, r, cert.Email, issued, err, log)
}

// answers tells which kind of kms mail a request replies to (a reminder,
// usually), or "" if none.
func (p *Processor) answers(ctx context.Context, inReplyTo []string) kms.OutboxKind {
	for _, id := range inReplyTo {
		if kind, err := p.opt.Queue.MailKindOf(ctx, id); err == nil {
			return kind
		}
	}
	return ""
}

// certNames reports whether a certificate's rfc822Names include email, in
// any case (kms keeps addresses in lower case).
func certNames(names []string, email string) bool {
	for _, n := range names {
		if strings.EqualFold(n, email) {
			return true
		}
	}
	return false
}

// enrollment handles a message that only an enrollment code can
// authenticate (SPEC 4.1): one CSR whose challengePassword is the code of
// the invited user the message comes from. content is the already verified
// content of a signed message, or nil to read it unverified.
func (p *Processor) enrollment(ctx context.Context, r request, content *smime.Content, log *slog.Logger) error {
	from := r.msg.From
	if content == nil {
		var err error
		if content, err = r.msg.UnverifiedContent(); err != nil {
			return p.refuse(ctx, r, from, "unreadable", "kms could not read your message: "+plainError(err)+".", err, log)
		}
	}
	switch {
	case len(content.CSRs) == 0:
		return p.refuse(ctx, r, from, "no_request",
			"kms found no certificate request in your message. To enroll, send a PKCS#10 certificate request whose challenge password is your enrollment code. To renew, reply to a kms message and sign your reply with your current certificate.",
			errors.New("no CSR and no usable signature"), log)
	case len(content.CSRs) > 1:
		return p.refuse(ctx, r, from, "several_csrs",
			fmt.Sprintf("The message carries %d certificate requests; send one.", len(content.CSRs)), errors.New("several CSRs"), log)
	case content.CSRs[0].ChallengePassword == "":
		return p.refuse(ctx, r, from, "no_code",
			"Your certificate request carries no enrollment code. Put the code your administrator gave you into the request's challenge password.",
			errors.New("CSR without challengePassword"), log)
	}
	if at := strings.LastIndexByte(from, '@'); at > 0 {
		pol := p.opt.Service.Policies().For(strings.ToLower(from[at+1:]))
		if pol.Enrollment.RequireEncryption && !r.msg.Encrypted {
			return p.refuse(ctx, r, from, "not_encrypted",
				"Enrollment requests must be encrypted to the kms certificate. Encrypt the message and send it again; your code is still valid.",
				errors.New("policy requires encrypted enrollment"), log)
		}
	}
	csr := content.CSRs[0]
	issued, err := p.opt.Service.EnrollByCode(ctx, from, csr.ChallengePassword, csr.Request.PublicKey,
		kms.Request{Actor: "mail:" + strings.ToLower(from), MessageID: r.messageID, Subject: r.msg.Subject, InboundID: r.in.ID})
	return p.outcome(ctx, r, from, issued, err, log)
}

// outcome turns the result of a lifecycle operation into the message's
// fate. The operation has already closed the inbound row when it issued.
func (p *Processor) outcome(ctx context.Context, r request, addr string, issued *kms.Certificate, err error, log *slog.Logger) error {
	switch {
	case err == nil:
		log.Info("request honoured", "serial", issued.Serial, "not_after", issued.NotAfter, "in_reply_to", r.msg.InReplyTo)
		p.count("issued", "")
		return nil
	case errors.Is(err, kms.ErrConflict):
		return err // a concurrent change or another worker: retry sees the new state
	case errors.Is(err, kms.ErrReplay):
		return p.drop(ctx, r.in, "replay of a request already honoured", log)
	case errors.Is(err, kms.ErrLapsed):
		c, cerr := p.opt.Service.GetUser(ctx, addr)
		if cerr == nil && len(c.Certificates) > 0 {
			return p.lapseNotice(ctx, r, &c.Certificates[len(c.Certificates)-1], log)
		}
	case errors.Is(err, kms.ErrNotFound), errors.Is(err, kms.ErrInvalidAddress), errors.Is(err, kms.ErrDomain):
		return p.drop(ctx, r.in, "not a user: "+err.Error(), log)
	}
	if text, ok := refusalText(err); ok {
		return p.refuse(ctx, r, addr, "refused", text, err, log)
	}
	return err // the database or the CA: temporary
}

// refusalText explains a domain refusal in words a user understands.
func refusalText(err error) (string, bool) {
	switch {
	case errors.Is(err, enroll.ErrCodeWrong), errors.Is(err, enroll.ErrMalformedCode):
		return "The enrollment code in your certificate request is not right. Check it and send the request again; after too many wrong tries the code is locked.", true
	case errors.Is(err, enroll.ErrCodeLocked):
		return "Your enrollment code is locked after too many wrong tries. Ask your administrator for a new one.", true
	case errors.Is(err, enroll.ErrCodeExpired):
		return "Your enrollment code has expired. Ask your administrator for a new one.", true
	case errors.Is(err, enroll.ErrCodeUsed), errors.Is(err, kms.ErrNoCode):
		return "There is no enrollment code waiting for your address: you may be enrolled already. To renew, reply to a kms message and sign your reply with your current certificate. Otherwise ask your administrator.", true
	case errors.Is(err, kms.ErrRekeyRequired):
		return "Your key is too old to be certified again. Make a new key and send a certificate request (PKCS#10) for it in a message signed with your current certificate.", true
	case errors.Is(err, policy.ErrWeakKey), errors.Is(err, policy.ErrKeyNotAllowed):
		return "The key in your certificate request is not accepted (" + plainError(err) + "). Make an RSA key of 2048 bits or more, or an ECDSA P-256 or P-384 key, and send a new request.", true
	case errors.Is(err, kms.ErrCertState):
		return "The certificate you signed with cannot be renewed (" + plainError(err) + "). Sign with your newest certificate, or ask your administrator.", true
	case errors.Is(err, kms.ErrUserState), errors.Is(err, kms.ErrAlreadyActive):
		return "Your address is not in a state that allows this request (" + plainError(err) + "). Ask your administrator.", true
	}
	return "", false
}

// plainError drops the Go package prefixes from an error for a person, and
// any bytes of the message that are not UTF-8.
func plainError(err error) string {
	return strings.ToValidUTF8(strings.TrimPrefix(err.Error(), "smime: "), "?")
}

// refuse answers a refused request: with a rejection to the user on record
// for addr if there is one, else by dropping it without reply. Either way
// the message is closed, with the rejection mail, in one transaction.
func (p *Processor) refuse(ctx context.Context, r request, addr, reason, text string, cause error, log *slog.Logger) error {
	if addr == "" {
		return p.drop(ctx, r.in, reason+": "+cause.Error(), log)
	}
	u, err := p.opt.Service.GetUser(ctx, addr)
	if errors.Is(err, kms.ErrNotFound) || errors.Is(err, kms.ErrInvalidAddress) {
		return p.drop(ctx, r.in, "unknown sender "+addr+": "+reason+": "+cause.Error(), log)
	}
	if err != nil {
		return err
	}
	subject := ""
	if r.msg != nil {
		subject = r.msg.Subject
	}
	log.Warn("request refused", "reason", reason, "err", cause, "reply_to", u.Email)
	p.count("rejected", reason)
	return p.opt.Service.RefuseInbound(ctx, r.in.ID, &kms.Reply{Kind: kms.MailRejection, To: u.Email, InReplyTo: r.messageID,
		Payload: kms.OutboxPayload{Email: u.Email, Reason: text, Subject: strings.ToValidUTF8(subject, "?")}}, reason+": "+plainError(cause))
}

// lapseNotice answers a signed request from a user whose certificate has
// expired: no certificate, a lapse notice to the address on record.
func (p *Processor) lapseNotice(ctx context.Context, r request, c *kms.Certificate, log *slog.Logger) error {
	log.Warn("request from a lapsed certificate", "serial", c.Serial, "expired", c.NotAfter)
	p.count("rejected", "lapsed")
	return p.opt.Service.RefuseInbound(ctx, r.in.ID, &kms.Reply{Kind: kms.MailLapse, To: c.Email, InReplyTo: r.messageID,
		Payload: kms.OutboxPayload{Email: c.Email, Serial: c.Serial, NotAfter: c.NotAfter, Subject: r.msg.Subject}}, "lapsed: "+c.Serial)
}

// drop closes a message without any reply, with a log line and a metric.
func (p *Processor) drop(ctx context.Context, in kms.Inbound, why string, log *slog.Logger) error {
	log.Warn("request dropped without reply", "why", why)
	p.count("dropped", dropReason(why))
	return p.opt.Queue.FinishInbound(ctx, in.ID, kms.InboundRefused, "dropped: "+strings.ToValidUTF8(why, "?"), p.opt.Clock.Now())
}

// dropReason is a bounded metric label for why.
func dropReason(why string) string {
	for _, k := range []string{"null return path", "Auto-Submitted", "report", "replay", "unknown sender", "not a user"} {
		if strings.Contains(why, k) {
			return strings.ReplaceAll(strings.ToLower(k), " ", "_")
		}
	}
	return "other"
}
