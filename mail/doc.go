// Package mail moves the KMS's mail in and out (SPEC section 4).
//
// Inbound, Listener is the SMTP server for the KMS address. It accepts a
// message only for that one address, reads it whole, and commits it to the
// store before it answers 250, so a message the client was told is accepted
// cannot be lost (SPEC section 7); the processing workers pick it up from
// the store afterwards.
//
// Outbound, Outbox is the delivery worker. It claims due rows of the outbox
// table, has a Renderer turn each into a signed RFC 5322 message, and hands
// it to a Transport: Maildir (the default, a mailbox mutt reads as it is) or
// Relay (an SMTP submission server). Temporary failures are retried with
// exponential backoff until relay.retry_for runs out; permanent ones (a 5xx
// to the message, a render error) are given up at once.
//
// Exactly once, and where it stops: the Maildir transport names each file
// after the outbox row and its Message-ID and looks for that name before it
// writes, so a crash between delivery and MarkSent does not deliver twice.
// SMTP has no such check, so through a relay a crash in that window
// (after the relay's 250, before the store's commit) sends the mail again,
// with the same Message-ID so that receivers can recognise it.
//
// The subpackage smime reads and writes the S/MIME content itself, and
// smtpclient is the SMTP client the relay transport sends with (it
// pipelines MAIL, RCPT and DATA, which go-smtp's client cannot).
package mail
