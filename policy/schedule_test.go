package policy

import (
	"testing"
	"time"
)

// walk follows Next from issuance, sending each reminder exactly when it is
// due, and returns the send times. It stops after 1000 reminders so that a
// broken schedule fails the test instead of hanging it.
func walk(t *testing.T, r Reminders, issued, expiry time.Time) []time.Time {
	t.Helper()
	var sent []time.Time
	var last time.Time
	for range 1000 {
		due, ok := r.Next(issued, expiry, last)
		if !ok {
			return sent
		}
		if !due.After(last) {
			t.Fatalf("Next(%s) = %s, not after the last reminder", last, due)
		}
		sent = append(sent, due)
		last = due
	}
	t.Fatalf("more than 1000 reminders between %s and %s", issued, expiry)
	return nil
}

func sameTimes(t *testing.T, got, want []time.Time) {
	t.Helper()
	n := max(len(got), len(want))
	for i := range n {
		var g, w time.Time
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if !g.Equal(w) {
			t.Errorf("reminder %d: got %s, want %s", i+1, g.Format(time.RFC3339), w.Format(time.RFC3339))
		}
	}
}

func parseReminders(t *testing.T, first, every, final, finalEvery string) Reminders {
	t.Helper()
	var r Reminders
	for _, f := range []struct {
		in  string
		out *Duration
	}{{first, &r.First}, {every, &r.Every}, {final, &r.Final}, {finalEvery, &r.FinalEvery}} {
		d, err := ParseDuration(f.in)
		if err != nil {
			t.Fatal(err)
		}
		*f.out = d
	}
	return r
}

// TestRemindersDefaultWalk walks an 18-month certificate issued on 31 January
// through every window of the default schedule.
func TestRemindersDefaultWalk(t *testing.T) {
	p := Default()
	issued := time.Date(2026, time.January, 31, 9, 0, 0, 0, time.UTC)
	expiry := p.Lifetime.AddTo(issued)
	if want := time.Date(2027, time.July, 31, 9, 0, 0, 0, time.UTC); !expiry.Equal(want) {
		t.Fatalf("expiry %s, want %s", expiry, want)
	}
	d := func(m time.Month, day int) time.Time { return time.Date(2027, m, day, 9, 0, 0, 0, time.UTC) }
	want := []time.Time{
		d(time.January, 31), // first: 12 months after issuance
		// every 14 days
		d(time.February, 14), d(time.February, 28), d(time.March, 14), d(time.March, 28),
		d(time.April, 11), d(time.April, 25), d(time.May, 9), d(time.May, 23),
		d(time.June, 6), d(time.June, 20), d(time.July, 4), d(time.July, 18),
		// 1 August would skip the final window: its start instead, then daily
		d(time.July, 24), d(time.July, 25), d(time.July, 26), d(time.July, 27),
		d(time.July, 28), d(time.July, 29), d(time.July, 30),
		// 31 July 09:00 is the expiry itself: nothing
	}
	sameTimes(t, walk(t, p.Reminders, issued, expiry), want)
}

// TestRemindersMonthEnd issues on 31 August so that the 18-month expiry falls
// on the last day of a (leap) February.
func TestRemindersMonthEnd(t *testing.T) {
	p := Default()
	issued := time.Date(2026, time.August, 31, 12, 0, 0, 0, time.UTC)
	expiry := p.Lifetime.AddTo(issued)
	if want := time.Date(2028, time.February, 29, 12, 0, 0, 0, time.UTC); !expiry.Equal(want) {
		t.Fatalf("expiry %s, want %s", expiry, want)
	}
	sent := walk(t, p.Reminders, issued, expiry)
	if len(sent) == 0 {
		t.Fatal("no reminders")
	}
	if first := time.Date(2027, time.August, 31, 12, 0, 0, 0, time.UTC); !sent[0].Equal(first) {
		t.Errorf("first reminder %s, want %s", sent[0], first)
	}
	start := time.Date(2028, time.February, 22, 12, 0, 0, 0, time.UTC)
	var final []time.Time
	for i, s := range sent {
		if i > 0 && s.Before(start) && s.Sub(sent[i-1]) != 14*day {
			t.Errorf("reminder %s is %s after the previous one, want 14 days", s, s.Sub(sent[i-1]))
		}
		if !s.Before(start) {
			final = append(final, s)
		}
	}
	var want []time.Time
	for i := range 7 {
		want = append(want, start.Add(time.Duration(i)*day))
	}
	sameTimes(t, final, want)
}

// TestRemindersCompressed runs a whole lifetime in seconds, as the demo does.
func TestRemindersCompressed(t *testing.T) {
	issued := time.Date(2026, time.May, 1, 0, 0, 0, 0, time.UTC)
	sec := func(n int) time.Time { return issued.Add(time.Duration(n) * time.Second) }
	tests := []struct {
		name                          string
		life                          time.Duration
		first, every, final, finEvery string
		want                          []int // seconds after issuance
	}{
		{"regular", 60 * time.Second, "20s", "10s", "7s", "2s", []int{20, 30, 40, 50, 53, 55, 57, 59}},
		{"first inside the final window", 60 * time.Second, "55s", "10s", "7s", "2s", []int{53, 55, 57, 59}},
		{"first after expiry", 60 * time.Second, "2m", "10s", "7s", "2s", []int{53, 55, 57, 59}},
		{"lifetime shorter than the window", 5 * time.Second, "20s", "10s", "7s", "2s", []int{0, 2, 4}},
		{"no final window", 60 * time.Second, "20s", "10s", "0s", "2s", []int{20, 30, 40, 50}},
		{"cadence lands on the window start", 60 * time.Second, "23s", "10s", "7s", "2s", []int{23, 33, 43, 53, 55, 57, 59}},
		{"window entry no sooner than final_every", 60 * time.Second, "20s", "10s", "9s", "5s", []int{20, 30, 40, 50, 55}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := parseReminders(t, tc.first, tc.every, tc.final, tc.finEvery)
			var want []time.Time
			for _, s := range tc.want {
				want = append(want, sec(s))
			}
			sameTimes(t, walk(t, r, issued, issued.Add(tc.life)), want)
		})
	}
}

// TestRemindersNextCases checks single steps of the default schedule,
// including late sends and the time around expiry.
func TestRemindersNextCases(t *testing.T) {
	r := Default().Reminders
	issued := time.Date(2026, time.January, 31, 9, 0, 0, 0, time.UTC)
	expiry := time.Date(2027, time.July, 31, 9, 0, 0, 0, time.UTC)
	at := func(m time.Month, day, hour int) time.Time { return time.Date(2027, m, day, hour, 0, 0, 0, time.UTC) }
	none := time.Time{}
	tests := []struct {
		name     string
		lastSent time.Time
		want     time.Time // zero: nothing due
	}{
		{"no reminder yet", none, at(time.January, 31, 9)},
		{"after the first", at(time.January, 31, 9), at(time.February, 14, 9)},
		{"sent late: the cadence follows the send", at(time.February, 1, 17), at(time.February, 15, 17)},
		{"regular lands before the window", at(time.July, 10, 9), at(time.July, 24, 9)},
		{"regular would skip the window start", at(time.July, 18, 9), at(time.July, 24, 9)},
		{"just before the window: final_every, not sooner", at(time.July, 23, 20), at(time.July, 24, 20)},
		{"at the window start", at(time.July, 24, 9), at(time.July, 25, 9)},
		{"inside the window", at(time.July, 27, 15), at(time.July, 28, 15)},
		{"last day before expiry", at(time.July, 30, 9), none},
		{"a day's reminder sent late", at(time.July, 30, 8), at(time.July, 31, 8)},
		{"at expiry", expiry, none},
		{"after expiry", at(time.August, 5, 9), none},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			due, ok := r.Next(issued, expiry, tc.lastSent)
			if ok != !tc.want.IsZero() || !due.Equal(tc.want) {
				t.Errorf("Next(lastSent=%s) = %s, %v; want %s, %v", tc.lastSent.Format(time.RFC3339),
					due.Format(time.RFC3339), ok, tc.want.Format(time.RFC3339), !tc.want.IsZero())
			}
		})
	}
}

// TestRemindersCatchUp plays the daemon: a loop that wakes every hour and
// sends a reminder when one is due. It is down from mid-February to April and
// again over most of the final week; each outage costs one catch-up reminder
// on restart, never a burst.
func TestRemindersCatchUp(t *testing.T) {
	r := Default().Reminders
	issued := time.Date(2026, time.January, 31, 9, 0, 0, 0, time.UTC)
	expiry := time.Date(2027, time.July, 31, 9, 0, 0, 0, time.UTC)
	at := func(m time.Month, day, hour int) time.Time { return time.Date(2027, m, day, hour, 0, 0, 0, time.UTC) }
	down := []struct{ from, until time.Time }{
		{at(time.February, 20, 0), at(time.April, 1, 12)},
		{at(time.July, 24, 12), at(time.July, 28, 15)},
	}
	isDown := func(now time.Time) bool {
		for _, d := range down {
			if !now.Before(d.from) && now.Before(d.until) {
				return true
			}
		}
		return false
	}
	var sent []time.Time
	var last time.Time
	for now := issued; now.Before(expiry.Add(30 * day)); now = now.Add(time.Hour) {
		if isDown(now) {
			continue
		}
		if due, ok := r.Next(issued, expiry, last); ok && !now.Before(due) {
			sent = append(sent, now)
			last = now
		}
	}
	want := []time.Time{
		at(time.January, 31, 9), at(time.February, 14, 9),
		at(time.April, 1, 12), // catch-up for the missed 28 February, 14 and 28 March
		at(time.April, 15, 12), at(time.April, 29, 12), at(time.May, 13, 12), at(time.May, 27, 12),
		at(time.June, 10, 12), at(time.June, 24, 12), at(time.July, 8, 12), at(time.July, 22, 12),
		at(time.July, 24, 9),  // the final window opens; 22 July + 14 days would skip it
		at(time.July, 28, 15), // catch-up after the second outage
		at(time.July, 29, 15), at(time.July, 30, 15),
	}
	sameTimes(t, sent, want)
}

func TestRemindersRefuseZeroStep(t *testing.T) {
	issued := time.Date(2026, time.May, 1, 0, 0, 0, 0, time.UTC)
	expiry := issued.Add(time.Hour)
	r := Reminders{First: Fixed(time.Minute), Final: Fixed(10 * time.Minute)}
	if due, ok := r.Next(issued, expiry, issued.Add(time.Minute)); ok {
		t.Errorf("zero every: Next = %s, true; want no reminder rather than one per tick", due)
	}
	if due, ok := r.Next(issued, expiry, issued.Add(55*time.Minute)); ok {
		t.Errorf("zero final_every: Next = %s, true; want no reminder rather than one per tick", due)
	}
}
