package mail

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/kmsmail/kms/kms"
)

// letter is the human part of a KMS message.
type letter struct {
	Subject string
	Text    string
}

// letterData is what the letters are written from.
type letterData struct {
	Payload    kms.OutboxPayload
	KMSAddress string
	Now        time.Time
	Recipient  string
}

// daysLeft counts whole days from now to t, rounding up, so that a
// certificate expiring tomorrow evening is "1 day" away, not 0.
func daysLeft(t, now time.Time) int {
	return int(math.Ceil(t.Sub(now).Hours() / 24))
}

// when writes a date for a person: "Thursday, 31 July 2027 (in 12 days)".
// For short lifetimes (tests, demos) the time of day matters, so it is
// given too.
func when(t, now time.Time) string {
	s := t.UTC().Format("Monday, 2 January 2006 at 15:04 UTC")
	switch d := daysLeft(t, now); {
	case d > 1:
		s += fmt.Sprintf(" (in %d days)", d)
	case d == 1:
		s += " (within a day)"
	case t.After(now):
		s += fmt.Sprintf(" (in %s)", t.Sub(now).Round(time.Second))
	}
	return s
}

// renewHowTo is the renewal instruction every reminder and reply repeats.
const renewHowTo = `To renew, reply to this message and sign your reply digitally with your
current certificate:
  - Thunderbird: Reply, then in the Security menu of the message window
    choose "Digitally Sign This Message", and Send.
  - Outlook: Reply, Options, "Sign", and Send.
  - Any other S/MIME mail client: send a signed message to %s.
Nothing else needs to be in the reply. kms answers with your renewed
certificate.`

func writeLetter(kind kms.OutboxKind, d letterData) (letter, error) {
	p := d.Payload
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	var subject string
	switch kind {
	case kms.MailCertificate:
		switch p.Operation {
		case "renewal":
			subject = "Your renewed S/MIME certificate"
			line("Hello,\n\nkms has renewed your S/MIME certificate for %s, with the same key.", p.Email)
		case "rekey":
			subject = "Your new S/MIME certificate"
			line("Hello,\n\nkms has certified your new key: here is your new S/MIME certificate for %s.", p.Email)
		default:
			subject = "Your S/MIME certificate"
			line("Hello,\n\nwelcome: kms has issued your S/MIME certificate for %s.", p.Email)
		}
		line("")
		line("  Serial number: %s", p.Serial)
		line("  Valid until:   %s", when(p.NotAfter, d.Now))
		line("")
		line("Most mail clients take the certificate from this signed message by")
		line("themselves. If yours does not, import the attached file smime.p7c: it holds")
		line("the certificate and the certificates of the authority that issued it.")
		line("Your private key never left your computer; keep it safe.")
		line("")
		line("Before it expires, kms will remind you to renew it.")
		line(renewHowTo, d.KMSAddress)
	case kms.MailInvitation:
		subject = "You are invited to get an S/MIME certificate"
		line("Hello,\n\nyour administrator has enrolled %s for an S/MIME certificate, so", p.Email)
		line("that you can sign and encrypt mail.")
		if p.Code != "" {
			line("")
			line("Your one-time enrollment code is:  %s", p.Code)
			line("It is valid for one use only.")
		} else {
			line("Your administrator gives you a one-time enrollment code in person or by")
			line("phone (never by mail).")
		}
		line("")
		line("To enroll, make a key and a certificate request whose challenge password")
		line("is the code, and mail the request to %s. With OpenSSL:", d.KMSAddress)
		line("")
		line("  openssl req -new -newkey rsa:3072 -keyout me.key -out me.csr \\")
		line("      -subj \"/CN=%s\" -addext \"subjectAltName=email:%s\" \\", p.Email, p.Email)
		line("      -config <(printf '[req]\\ndistinguished_name=dn\\nattributes=attr\\n[dn]\\n[attr]\\nchallengePassword=YOUR-CODE\\n')")
		line("")
		line("and send me.csr as an attachment (or pasted into the message) to %s.", d.KMSAddress)
		line("kms answers with your certificate.")
	case kms.MailReminder:
		subject = "Your S/MIME certificate expires " + p.NotAfter.UTC().Format("2 January 2006")
		line("Hello,\n\nyour S/MIME certificate for %s expires on", p.Email)
		line("%s.", when(p.NotAfter, d.Now))
		line("")
		line(renewHowTo, d.KMSAddress)
		line("")
		line("If it expires, you can no longer renew it by mail and your administrator")
		line("must enroll you again. kms repeats this reminder until you renew.")
		line("")
		line("  Serial number: %s", p.Serial)
	case kms.MailRejection:
		subject = "Your request to kms was not accepted"
		if p.Subject != "" {
			subject = "Not accepted: " + p.Subject
		}
		line("Hello,\n\nkms could not act on your message. %s", p.Reason)
		line("")
		line("Nothing has changed; you may send a corrected request.")
	case kms.MailLapse:
		subject = "Your S/MIME certificate has expired"
		line("Hello,\n\nyour S/MIME certificate for %s (serial %s) expired on", p.Email, p.Serial)
		line("%s and was not renewed.", p.NotAfter.UTC().Format("Monday, 2 January 2006 at 15:04 UTC"))
		line("")
		line("An expired certificate cannot be renewed by mail. Ask your administrator to")
		line("enroll you again; you will receive a new enrollment code.")
	case kms.MailLapseAdmin:
		subject = "S/MIME certificate lapsed: " + p.Email
		line("The S/MIME certificate of %s (serial %s) expired on", p.Email, p.Serial)
		line("%s without being renewed. The user is now lapsed.", p.NotAfter.UTC().Format(time.RFC3339))
		line("")
		line("To let the user get a certificate again, enroll them anew:")
		line("")
		line("  kms user enroll %s", p.Email)
	case kms.MailRevocation:
		subject = "Your S/MIME certificate was revoked"
		line("Hello,\n\nyour S/MIME certificate for %s (serial %s) has been revoked", p.Email, p.Serial)
		line("by an administrator (reason: %s). Mail clients will no longer trust it.", p.Reason)
		line("")
		line("If you need a certificate, ask your administrator to enroll you again.")
	case kms.MailUndeliverable:
		subject = "Undeliverable kms mail to " + p.Email
		line("kms gave up delivering a %s message to %s.", p.Operation, p.Email)
		line("")
		line("  Message-ID: %s", p.Subject)
		line("  Reason:     %s", p.Reason)
		line("")
		line("Check the address and the relay; `kms audit --email %s` shows what happened.", p.Email)
	default:
		return letter{}, fmt.Errorf("no letter for mail kind %q", kind)
	}
	line("")
	line("-- ")
	line("kms, the S/MIME key management server <%s>", d.KMSAddress)
	line("This message was sent automatically and is digitally signed.")
	return letter{Subject: subject, Text: b.String()}, nil
}
