package mail

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kmsmail/kms/kms"
)

// lookupFailsOnce is the lifecycle service with one store failure: once
// armed, its next CertForSigner call fails as a lost database connection
// would. Everything else, and every other call, is the real service.
type lookupFailsOnce struct {
	Lifecycle
	armed atomic.Bool
}

var errStoreDown = errors.New("store: connection lost (injected)")

func (l *lookupFailsOnce) CertForSigner(ctx context.Context, raw []byte) (*kms.Certificate, error) {
	if l.armed.CompareAndSwap(true, false) {
		return nil, errStoreDown
	}
	return l.Lifecycle.CertForSigner(ctx, raw)
}

// TestSignerLookupStoreErrorIsRetried: when the store fails while the
// processor looks up a request's signer, the request is neither taken for
// a stranger's (dropped, or answered as an enrollment without a code) nor
// lost: it waits for a retry with nothing issued or sent, and the retry
// renews with one reply.
func TestSignerLookupStoreErrorIsRetried(t *testing.T) {
	var svc *lookupFailsOnce
	d := newE2EDaemon(t, func(o *ProcessorOptions) {
		svc = &lookupFailsOnce{Lifecycle: o.Service}
		o.Service = svc
	})
	u := d.invite("alice@example.com")
	d.enroll(u)
	m := d.mark()
	svc.armed.Store(true)
	if r := d.send(u.email, nil, d.renewal(u, "")); r.data != 250 {
		t.Fatalf("renewal: SMTP %+v", r)
	}
	eventually(t, "the failed lookup's retry", func() bool {
		return strings.Contains(d.log.String(), "inbound: processing failed, will retry")
	})
	if in := d.inboundAfter(m.inbound); len(in) != 1 || in[0].state != "pending" {
		t.Fatalf("after the failed lookup the request is %+v; want it pending for a retry", in)
	}
	if got := d.queuedAfter(m); len(got) != 0 || d.certCount() != m.certs {
		t.Fatalf("after the failed lookup: queued %q, %d certificates issued; want nothing", got, d.certCount()-m.certs)
	}
	if !strings.Contains(d.log.String(), errStoreDown.Error()) {
		t.Fatalf("the retry's log line does not give the store's error:\n%s", d.log.String())
	}

	d.settleOrFail() // moves the clock to the retry
	got := d.deliveredAfter(m)
	if len(got) != 1 || e2eAddr(got[0].to) != u.email || d.certCount() != m.certs+1 {
		t.Fatalf("after the retry: delivered %v, %d certificates issued; want one reply to %s and one certificate",
			got, d.certCount()-m.certs, u.email)
	}
	if in := d.inboundAfter(m.inbound); len(in) != 1 || in[0].state != "done" {
		t.Fatalf("the request ended %+v; want done", in)
	}
}
