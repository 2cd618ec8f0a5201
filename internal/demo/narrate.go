package demo

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// The page: 80 columns, a time stamp (compressed months, real seconds) in
// front of each step, mail excerpts indented under it.
const (
	lineWidth  = 80
	stampWidth = 16
	mailIndent = "        | "
	mailLines  = 5 // lines of a letter shown
)

// narrator writes the story as it happens.
type narrator struct {
	w     io.Writer
	start time.Time
	month time.Duration
	shown map[mailKind]bool // kinds whose excerpt was shown once
}

func newNarrator(w io.Writer, month time.Duration, start time.Time) *narrator {
	return &narrator{w: w, start: start, month: month, shown: map[mailKind]bool{}}
}

// months is the compressed time since the story began.
func (n *narrator) months() float64 {
	return float64(time.Since(n.start)) / float64(n.month)
}

func (n *narrator) stamp() string {
	e := time.Since(n.start)
	return fmt.Sprintf("%6.1f %6.1fs  ", float64(e)/float64(n.month), e.Seconds())
}

// say prints a step: its time stamp, then the text wrapped beside it.
func (n *narrator) say(format string, args ...any) {
	n.block(n.stamp(), fmt.Sprintf(format, args...))
}

// more continues the previous step, under its text.
func (n *narrator) more(format string, args ...any) {
	n.block(strings.Repeat(" ", stampWidth), fmt.Sprintf(format, args...))
}

func (n *narrator) block(first, text string) {
	for i, l := range wrap(text, lineWidth-stampWidth) {
		if i > 0 {
			first = strings.Repeat(" ", stampWidth)
		}
		fmt.Fprintln(n.w, first+l)
	}
}

// para prints a paragraph across the page, and a blank line after it.
func (n *narrator) para(text string) {
	for _, l := range wrap(text, lineWidth) {
		fmt.Fprintln(n.w, l)
	}
	fmt.Fprintln(n.w)
}

// mail shows a mail kms sent: who to, its subject, and the first lines of
// its text the first time a kind of mail appears; a line for later ones.
func (n *narrator) mail(m *received) {
	if n.shown[m.kind] {
		what := m.kind.label()
		if m.nth > 1 {
			what += fmt.Sprintf(" (#%d)", m.nth)
		}
		n.say("kms mails %s %s.", m.to, what)
		return
	}
	n.shown[m.kind] = true
	n.say("kms mails %s %s, signed by %s (verified):", m.to, m.kind.label(), m.from)
	n.more("Subject: %s", m.subject)
	if len(m.certs) > 0 {
		n.more("Attached: smime.p7c, the certificate and its CA chain.")
	}
	for _, l := range excerpt(m.text, lineWidth-len(mailIndent), mailLines) {
		fmt.Fprintln(n.w, strings.TrimRight(mailIndent+l, " "))
	}
}

// excerpt returns the first max lines of a letter's body, rewrapped to
// width: without the greeting and the signature, prose lines joined into
// paragraphs, indented lines (a serial number, a command) kept as they
// are, and "..." if there is more.
func excerpt(text string, width, max int) []string {
	var paras []string
	prose := false // the last paragraph is prose that the next line continues
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimRight(l, " \r")
		switch {
		case l == "--":
			return cut(paras, width, max)
		case l == "", len(paras) == 0 && l == "Hello,":
			prose = false
		case prose && !strings.HasPrefix(l, " "):
			paras[len(paras)-1] += " " + l
		default:
			paras = append(paras, l)
			prose = !strings.HasPrefix(l, " ")
		}
	}
	return cut(paras, width, max)
}

// cut wraps paragraphs to width and keeps the first max lines.
func cut(paras []string, width, max int) []string {
	var out []string
	for _, p := range paras {
		for _, l := range wrap(p, width) {
			if len(out) == max {
				return append(out, "...")
			}
			out = append(out, l)
		}
	}
	return out
}

// wrap breaks text into lines of at most width columns at spaces; a word
// longer than width stands alone on its line. Newlines in text are kept,
// and a line's indentation is repeated on its continuation lines.
func wrap(text string, width int) []string {
	var out []string
	for _, para := range strings.Split(text, "\n") {
		indent := para[:len(para)-len(strings.TrimLeft(para, " "))]
		line := indent
		for _, word := range strings.Fields(para) {
			switch {
			case line == indent:
				line += word
			case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) <= width:
				line += " " + word
			default:
				out = append(out, line)
				line = indent + word
			}
		}
		out = append(out, line)
	}
	return out
}
