package smime

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"strings"
	"sync"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// Limits bound the work ParseRequest and the Request methods do on one
// message. A zero field takes its default.
type Limits struct {
	// MaxMessageBytes is the largest message accepted (default 4 MiB).
	MaxMessageBytes int
	// MaxHeaderBytes is the largest header block of the message or of any
	// MIME part (default 64 KiB).
	MaxHeaderBytes int
	// MaxParts is the most MIME entities read in one layer of the message
	// (default 100).
	MaxParts int
	// MaxDepth is the deepest nesting of multiparts, signatures and
	// encryption layers (default 10).
	MaxDepth int
}

// DefaultLimits returns the limits a zero Limits stands for.
func DefaultLimits() Limits {
	return Limits{
		MaxMessageBytes: 4 << 20,
		MaxHeaderBytes:  64 << 10,
		MaxParts:        100,
		MaxDepth:        10,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = d.MaxMessageBytes
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if l.MaxParts <= 0 {
		l.MaxParts = d.MaxParts
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = d.MaxDepth
	}
	return l
}

// entity is one MIME entity, its header parsed and its body kept raw.
type entity struct {
	header    message.Header
	mediaType string // lower case; text/plain when absent
	params    map[string]string
	body      []byte // raw, still transfer-encoded
}

// headerReaders are reused by readEntity: textproto.ReadHeader copies what
// it keeps, and a fresh 4 KB bufio.Reader for every MIME entity (three a
// renewal) was ~8% of the bytes the daemon allocates a renewal.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReader(nil) }}

// readEntity splits raw at the first empty line and parses the header.
func readEntity(raw []byte, lim Limits) (*entity, error) {
	hdr, body := splitHeader(raw)
	if len(hdr) > lim.MaxHeaderBytes {
		return nil, fmt.Errorf("%w: header of %d bytes, the limit is %d", ErrLimit, len(hdr), lim.MaxHeaderBytes)
	}
	br := headerReaders.Get().(*bufio.Reader)
	br.Reset(bytes.NewReader(hdr))
	h, err := textproto.ReadHeader(br)
	br.Reset(nil)
	headerReaders.Put(br)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	e := &entity{header: message.Header{Header: h}, mediaType: "text/plain", body: body}
	if ct := h.Get("Content-Type"); ct != "" {
		t, params, err := mime.ParseMediaType(ct)
		if err != nil && err != mime.ErrInvalidMediaParameter {
			return nil, fmt.Errorf("%w: Content-Type %q: %v", ErrMalformed, ct, err)
		}
		e.mediaType, e.params = strings.ToLower(t), params
	}
	return e, nil
}

// splitHeader returns the header block (with the line break ending its last
// field) and the body after the empty line. Without an empty line the whole
// input is header.
func splitHeader(raw []byte) (hdr, body []byte) {
	switch {
	case bytes.HasPrefix(raw, []byte("\r\n")):
		return nil, raw[2:]
	case bytes.HasPrefix(raw, []byte("\n")):
		return nil, raw[1:]
	}
	for i := 0; ; {
		j := bytes.IndexByte(raw[i:], '\n')
		if j < 0 {
			return raw, nil
		}
		i += j + 1
		switch {
		case bytes.HasPrefix(raw[i:], []byte("\r\n")):
			return raw[:i], raw[i+2:]
		case bytes.HasPrefix(raw[i:], []byte("\n")):
			return raw[:i], raw[i+1:]
		}
	}
}

// decodedBody undoes the Content-Transfer-Encoding (and, for text, the
// charset where go-message knows it).
func (e *entity) decodedBody() ([]byte, error) {
	m, err := message.New(e.header, bytes.NewReader(e.body))
	if err != nil && !message.IsUnknownCharset(err) {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// Decoding never grows base64 or quoted-printable; charset conversion
	// can, so bound it.
	out, err := io.ReadAll(io.LimitReader(m.Body, int64(4*len(e.body)+16)))
	if err != nil {
		return nil, fmt.Errorf("%w: body of %s part: %v", ErrMalformed, e.mediaType, err)
	}
	return out, nil
}

// splitMultipart returns the raw parts of a multipart body: each is the
// bytes after the line break that ends its delimiter line, up to (not
// including) the line break before the next delimiter line (RFC 2046
// 5.1.1: that line break belongs to the delimiter). Both CRLF and bare LF
// line ends are recognised. At most maxParts parts are accepted.
func splitMultipart(body []byte, boundary string, maxParts int) ([][]byte, error) {
	if boundary == "" || len(boundary) > 200 {
		return nil, fmt.Errorf("%w: multipart boundary missing or longer than 200 characters", ErrMalformed)
	}
	delim := []byte("--" + boundary)
	var parts [][]byte
	start := -1 // start of the current part, -1 while in the preamble
	for pos := 0; pos < len(body); {
		i := bytes.Index(body[pos:], delim)
		if i < 0 {
			break
		}
		at := pos + i
		pos = at + len(delim)
		if at > 0 && body[at-1] != '\n' {
			continue // not at the start of a line
		}
		rest := body[pos:]
		closing := bytes.HasPrefix(rest, []byte("--"))
		if closing {
			rest = rest[2:]
		}
		// Transport padding (LWSP) may follow, then the line break.
		n := 0
		for n < len(rest) && (rest[n] == ' ' || rest[n] == '\t') {
			n++
		}
		lineEnd := -1
		switch {
		case bytes.HasPrefix(rest[n:], []byte("\r\n")):
			lineEnd = n + 2
		case bytes.HasPrefix(rest[n:], []byte("\n")):
			lineEnd = n + 1
		case n == len(rest):
			lineEnd = n
		}
		if lineEnd < 0 && !closing {
			continue // "--boundaryX": a longer string, not our delimiter
		}
		if start >= 0 {
			parts = append(parts, body[start:trimLineBreak(body, start, at)])
			if len(parts) > maxParts {
				return nil, fmt.Errorf("%w: more than %d MIME parts", ErrLimit, maxParts)
			}
		}
		if closing {
			return parts, nil
		}
		start = pos + lineEnd
		pos = start
	}
	if start < 0 {
		return nil, fmt.Errorf("%w: no multipart delimiter %q in the body", ErrMalformed, delim)
	}
	// No closing delimiter (a truncated message): the last part runs to the
	// end, less a final line break.
	end := len(body)
	if bytes.HasSuffix(body[start:], []byte("\r\n")) {
		end -= 2
	} else if bytes.HasSuffix(body[start:], []byte("\n")) {
		end--
	}
	parts = append(parts, body[start:end])
	if len(parts) > maxParts {
		return nil, fmt.Errorf("%w: more than %d MIME parts", ErrLimit, maxParts)
	}
	return parts, nil
}

// trimLineBreak returns the end of a part whose next delimiter starts at
// delimAt: before the CRLF or LF that precedes the delimiter, but not before
// start.
func trimLineBreak(body []byte, start, delimAt int) int {
	end := delimAt
	if end > start && body[end-1] == '\n' {
		end--
		if end > start && body[end-1] == '\r' {
			end--
		}
	}
	return end
}

// toCRLF turns bare LF line ends into CRLF.
func toCRLF(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/32)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// hasBareLF reports whether b has an LF not preceded by CR.
func hasBareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}
