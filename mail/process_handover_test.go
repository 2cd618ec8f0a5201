package mail

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
)

// finishRecorder is the store as the processor's queue, telling the test
// which messages were finished.
type finishRecorder struct {
	*kms.Store
	finished chan int64
	claims   atomic.Int64 // ClaimInbound calls
}

func (f *finishRecorder) ClaimInbound(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]kms.Inbound, error) {
	f.claims.Add(1)
	return f.Store.ClaimInbound(ctx, now, lease, limit)
}

func (f *finishRecorder) FinishInbound(ctx context.Context, id int64, state kms.InboundState, outcome string, now time.Time) error {
	err := f.Store.FinishInbound(ctx, id, state, outcome, now)
	if err == nil {
		f.finished <- id
	}
	return err
}

// handoverRig is a processor over a real SQLite store, fed as the SMTP
// listener feeds it.
type handoverRig struct {
	t     *testing.T
	ctx   context.Context
	store *kms.Store
	queue *finishRecorder
	clk   *clock.Fake
	p     *Processor
	n     int
}

func newHandoverRig(t *testing.T, life Lifecycle) *handoverRig {
	ctx := context.Background()
	store, err := kms.OpenStore(ctx, "sqlite", filepath.Join(t.TempDir(), "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	r := &handoverRig{t: t, ctx: ctx, store: store, queue: &finishRecorder{Store: store, finished: make(chan int64, 100)}, clk: clock.NewFake(t0)}
	// Poll is an hour: only Notify and the hand-over move the processor.
	r.p = NewProcessor(ProcessorOptions{Service: life, Queue: r.queue, Clock: r.clk, Workers: 1, Poll: time.Hour})
	return r
}

// message returns a new message that the processor drops unanswered
// (Auto-Submitted), or, with blockable, one that makes it look the sender
// up.
func (r *handoverRig) message(blockable bool) []byte {
	r.n++
	auto := "Auto-Submitted: auto-replied\r\n"
	if blockable {
		auto = ""
	}
	return fmt.Appendf(nil, "From: ann@example.com\r\nTo: kms@example.com\r\n%sSubject: %d\r\nMessage-ID: <m%d@example.com>\r\n\r\nhello\r\n", auto, r.n, r.n)
}

// handOver stores raw as the SMTP listener does with a hand-over, and
// hands it over; it fails the test if there is no room.
func (r *handoverRig) handOver(raw []byte) int64 {
	r.t.Helper()
	lease, ok := r.p.Reserve()
	if !ok {
		r.t.Fatal("no room to hand over")
	}
	now := r.clk.Now()
	id, dup, err := r.store.AcceptInboundClaimed(r.ctx, raw, "ann@example.com", "192.0.2.1:25", now, lease)
	if err != nil || dup {
		r.t.Fatalf("accept: duplicate %v, %v", dup, err)
	}
	r.p.Deliver(kms.Inbound{ID: id, MailFrom: "ann@example.com", RemoteAddr: "192.0.2.1:25", Raw: raw, ReceivedAt: now, Attempts: 1})
	return id
}

// run starts the processor and returns its stop function.
func (r *handoverRig) run() (stop func()) {
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan error, 1)
	go func() { done <- r.p.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Error(err)
		}
	}
}

// waitFinished waits for the given messages to be finished, in any order,
// and fails on any other.
func (r *handoverRig) waitFinished(ids ...int64) {
	r.t.Helper()
	want := map[int64]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for len(want) > 0 {
		select {
		case id := <-r.queue.finished:
			if !want[id] {
				r.t.Fatalf("message %d finished, not one of %v (or twice)", id, ids)
			}
			delete(want, id)
		case <-time.After(30 * time.Second):
			r.t.Fatalf("messages %v were never finished", want)
		}
	}
}

// TestProcessorTakesHandedOverMessages: messages handed over by the SMTP
// listener are processed without a claim from the table (which could not
// take them: they are claimed from the start), and a message that is only
// in the table is still claimed and processed beside them.
func TestProcessorTakesHandedOverMessages(t *testing.T) {
	r := newHandoverRig(t, &blockingLifecycle{})
	stop := r.run()
	defer stop()
	var ids []int64
	for range 3 {
		ids = append(ids, r.handOver(r.message(false)))
	}
	tableID, _, err := r.store.AcceptInbound(r.ctx, r.message(false), "ann@example.com", "192.0.2.1:25", r.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	r.p.Notify()
	r.waitFinished(append(ids, tableID)...)
	if n := value(t, r.p.handedOver); n != 3 {
		t.Errorf("kms_inbound_handed_over_total = %v, want 3", n)
	}
	if n := r.p.reserved.Load(); n != 0 {
		t.Errorf("%d reservations left, want 0", n)
	}
}

// TestProcessorClaimsOnlyWhenTheTableMayHaveWork: a stream of handed-over
// messages costs no claims from the table (a write transaction each), only
// the one at start-up; a message stored without a hand-over (Notify) is
// still claimed. Before, the processor claimed after every few hand-overs
// and found nothing: 41 claims for these 20 messages.
func TestProcessorClaimsOnlyWhenTheTableMayHaveWork(t *testing.T) {
	r := newHandoverRig(t, &blockingLifecycle{})
	stop := r.run()
	defer stop()
	for range 20 {
		r.waitFinished(r.handOver(r.message(false)))
	}
	if n := r.queue.claims.Load(); n != 1 {
		t.Errorf("%d claims from the table for 20 handed-over messages, want 1 (at start)", n)
	}
	tableID, _, err := r.store.AcceptInbound(r.ctx, r.message(false), "ann@example.com", "192.0.2.1:25", r.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	r.p.Notify()
	r.waitFinished(tableID)
}

// TestProcessorClaimsDueRowsDuringAStreamOfHandOvers: a row that falls due
// in the table without a Notify (a retry, an expired hand-over) is claimed
// within the poll interval even while hand-overs keep the processor busy,
// not only once they stop. With the poll tick read only when the processor
// idles, the row waited for all 300 hand-overs.
func TestProcessorClaimsDueRowsDuringAStreamOfHandOvers(t *testing.T) {
	life := &gatedLifecycle{blockingLifecycle: blockingLifecycle{entered: make(chan struct{}, 1)}, release: make(chan struct{})}
	r := newHandoverRig(t, life)
	r.p.opt.Poll = time.Millisecond
	r.queue.finished = make(chan int64, 1000)
	stop := r.run()
	defer stop()
	// The only worker waits in the first message; the rest queue up in
	// memory behind it.
	first := r.handOver(r.message(true))
	<-life.entered
	const n = 300
	var last int64
	for range n {
		last = r.handOver(r.message(false))
	}
	tableID, _, err := r.store.AcceptInbound(r.ctx, r.message(false), "ann@example.com", "192.0.2.1:25", r.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // ten poll intervals
	close(life.release)
	r.waitFinished(first)
	for i := 0; ; i++ {
		select {
		case id := <-r.queue.finished:
			if id == tableID {
				t.Logf("the table's row finished after %d of %d hand-overs", i, n)
				return
			}
			if id == last {
				t.Fatalf("all %d hand-overs finished before the row due in the table", n)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the row due in the table was never finished")
		}
	}
}

// gatedLifecycle holds the first sender lookup until release is closed.
type gatedLifecycle struct {
	blockingLifecycle
	release chan struct{}
}

func (g *gatedLifecycle) GetUser(ctx context.Context, addr string) (*kms.UserDetail, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
		return nil, kms.ErrNotFound
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestProcessorGivesBackHandedOverMessagesAtStop: at shutdown, the message
// in progress, the one on its way to a worker and those waiting in memory
// are all given back, claimable at once with their attempt undone; one
// handed over after the processor stopped is given back too.
func TestProcessorGivesBackHandedOverMessagesAtStop(t *testing.T) {
	life := &blockingLifecycle{entered: make(chan struct{}, 1)}
	r := newHandoverRig(t, life)
	stop := r.run()
	for range 4 {
		r.handOver(r.message(true))
	}
	select {
	case <-life.entered: // one in progress, the rest behind it
	case <-time.After(30 * time.Second):
		t.Fatal("the processor never started on a message")
	}
	stop()
	late := r.handOver(r.message(true))
	if n := r.p.reserved.Load(); n != 0 {
		t.Errorf("%d reservations left, want 0", n)
	}
	again, err := r.store.ClaimInbound(r.ctx, r.clk.Now(), time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 5 || again[4].ID != late {
		t.Fatalf("after the shutdown %d of 5 messages could be claimed; the rest wait for their lease", len(again))
	}
	for _, m := range again {
		if m.Attempts != 1 {
			t.Errorf("message %d: %d attempts, want 1 (the hand-over's is undone)", m.ID, m.Attempts)
		}
	}
}

// TestProcessorLeavesStaleHandOverToTheTable: a message that waited in
// memory for more than half its lease is not processed from memory (its
// claim could run out meanwhile, and a claim from the table take it too)
// but from the table once the lease is over: exactly once.
func TestProcessorLeavesStaleHandOverToTheTable(t *testing.T) {
	r := newHandoverRig(t, &blockingLifecycle{})
	id := r.handOver(r.message(false))
	r.clk.Advance(lease/2 + time.Second)
	stop := r.run()
	defer stop()
	eventually(t, "the stale hand-over dropped", func() bool { return value(t, r.p.handoverExpired) == 1 })
	select {
	case got := <-r.queue.finished:
		t.Fatalf("message %d processed from memory (or claimed within its lease)", got)
	case <-time.After(50 * time.Millisecond):
	}
	r.clk.Advance(lease / 2)
	r.p.Notify()
	r.waitFinished(id)
	if n := value(t, r.p.handedOver); n != 0 {
		t.Errorf("kms_inbound_handed_over_total = %v, want 0", n)
	}
}

// TestGivingBackFailsLoudly: when the store cannot take back a claim at
// shutdown (it is gone), the processor and the delivery worker say so and
// what it means (the rows wait for their lease), and carry on.
func TestGivingBackFailsLoudly(t *testing.T) {
	r := newHandoverRig(t, &blockingLifecycle{})
	log := &syncBuffer{}
	r.p.opt.Log = slog.New(slog.NewTextHandler(log, nil))
	stop := r.run()
	stop()
	lease, ok := r.p.Reserve()
	if !ok {
		t.Fatal("no room")
	}
	id, _, err := r.store.AcceptInboundClaimed(r.ctx, r.message(false), "ann@example.com", "192.0.2.1:25", r.clk.Now(), lease)
	if err != nil {
		t.Fatal(err)
	}
	r.store.Close()
	r.p.Deliver(kms.Inbound{ID: id, ReceivedAt: r.clk.Now(), Attempts: 1}) // after the stop: given back at once, and that fails
	if !strings.Contains(log.String(), "cannot give back claimed messages at shutdown; they wait for their lease") ||
		!strings.Contains(log.String(), "messages=1") {
		t.Errorf("processor log:\n%s", log)
	}

	e := newOutEnv(t)
	outLog := &syncBuffer{}
	o, err := NewOutbox(OutboxConfig{Store: e.store, Clock: e.clock, From: kmsAddr, Renderer: textRenderer{from: kmsAddr},
		Transport: newMaildir(t), Log: slog.New(slog.NewTextHandler(outLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mailID := e.queue(t, kms.MailCertificate, "alice@example.com")
	o.Reserve()
	o.Deliver(e.handOver(t, mailID, time.Hour))
	e.store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := o.Run(ctx); err != nil { // stops at once, giving the mail back: that fails
		t.Fatal(err)
	}
	if !strings.Contains(outLog.String(), "cannot give back mails handed over and not delivered; they wait for their lease") {
		t.Errorf("outbox log:\n%s", outLog)
	}
}
