package policy

import "time"

// Next returns when the next expiry reminder is due for a certificate valid
// from issued to expiry, given when the last reminder was sent (the zero time
// if none was). ok is false, and due the zero time, when no further reminder
// is due because the certificate has expired by then. The rule:
//
//   - The final window is the last Final before expiry, from
//     start = expiry - Final (a zero Final means there is no window).
//   - No reminder yet: due at issued + First, or at the window's start if that
//     comes sooner (a short-lived or imported certificate still gets its final
//     reminders), but never before issued.
//   - Last reminder sent before the window: due at lastSent + Every. If that
//     would skip past the window's start, due at the window's start instead,
//     but never sooner than FinalEvery after lastSent.
//   - Last reminder sent inside the window: due at lastSent + FinalEvery.
//   - Nothing is due at or after expiry: from then on the certificate has
//     lapsed and the lapse notice, not a reminder, is what the user gets.
//
// The answer depends on lastSent only, never on reminders that were missed:
// due may be in the past after the daemon was down, and then the caller sends
// one catch-up reminder at once and passes that send time as lastSent next
// time, so a backlog never turns into a burst of mail. Calendar months in
// First are counted from issued the way Duration.AddTo counts them.
//
// A zero or negative Every or FinalEvery (which Policy.Validate refuses)
// makes Next return ok=false rather than a reminder at the same instant over
// and over.
func (r Reminders) Next(issued, expiry, lastSent time.Time) (due time.Time, ok bool) {
	start := r.Final.SubFrom(expiry)
	if lastSent.IsZero() {
		due = r.First.AddTo(issued)
		if start.Before(due) {
			due = start
		}
		if due.Before(issued) {
			due = issued
		}
		return beforeExpiry(due, expiry)
	}
	if !lastSent.Before(start) {
		due = r.FinalEvery.AddTo(lastSent)
	} else {
		due = r.Every.AddTo(lastSent)
		if due.After(start) {
			due = start
			if soonest := r.FinalEvery.AddTo(lastSent); soonest.After(due) {
				due = soonest
			}
		}
	}
	if !due.After(lastSent) {
		return time.Time{}, false
	}
	return beforeExpiry(due, expiry)
}

// beforeExpiry returns due, true if due is before expiry, and the zero time
// and false otherwise.
func beforeExpiry(due, expiry time.Time) (time.Time, bool) {
	if !due.Before(expiry) {
		return time.Time{}, false
	}
	return due, true
}
