package smime

import (
	"bytes"
	"fmt"
	"strings"
)

// Content is what a request body carries for the KMS.
type Content struct {
	// CSRs are the certification requests found, each once, in the order
	// met: application/pkcs10 parts (RFC 5967, base64 DER) and PEM blocks
	// in text/plain parts. Each one's self-signature has been checked. More
	// than one is ambiguous; the caller should refuse such a request.
	CSRs []*CSR
}

// contentWalker walks the MIME tree of a content entity within limits.
type contentWalker struct {
	limits Limits
	parts  int
	out    Content
}

// parseContent reads the CSRs of a MIME entity. depth is the nesting level
// of the entity in the message.
func parseContent(raw []byte, lim Limits, depth int) (*Content, error) {
	w := &contentWalker{limits: lim}
	if err := w.walk(raw, depth); err != nil {
		return nil, err
	}
	return &w.out, nil
}

func (w *contentWalker) walk(raw []byte, depth int) error {
	if depth > w.limits.MaxDepth {
		return fmt.Errorf("%w: MIME nesting deeper than %d", ErrLimit, w.limits.MaxDepth)
	}
	w.parts++
	if w.parts > w.limits.MaxParts {
		return fmt.Errorf("%w: more than %d MIME parts", ErrLimit, w.limits.MaxParts)
	}
	e, err := readEntity(raw, w.limits)
	if err != nil {
		return err
	}
	switch {
	case strings.HasPrefix(e.mediaType, "multipart/"):
		parts, err := splitMultipart(e.body, e.params["boundary"], w.limits.MaxParts-w.parts)
		if err != nil {
			return err
		}
		for _, p := range parts {
			if err := w.walk(p, depth+1); err != nil {
				return err
			}
		}
		return nil
	case e.mediaType == "application/pkcs10", e.mediaType == "application/x-pkcs10":
		body, err := e.decodedBody()
		if err != nil {
			return err
		}
		if bytes.Contains(body, []byte("-----BEGIN ")) {
			return w.addPEM(body)
		}
		c, err := ParseCSR(body)
		if err != nil {
			return err
		}
		w.add(c)
		return nil
	case e.mediaType == "text/plain":
		body, err := e.decodedBody()
		if err != nil {
			return err
		}
		return w.addPEM(body)
	default:
		// message/rfc822 is not entered: a forwarded message's requests
		// are not the sender's. Other types carry nothing for the KMS.
		return nil
	}
}

func (w *contentWalker) addPEM(text []byte) error {
	csrs, err := csrsFromPEM(text)
	if err != nil {
		return err
	}
	for _, c := range csrs {
		w.add(c)
	}
	return nil
}

func (w *contentWalker) add(c *CSR) {
	for _, o := range w.out.CSRs {
		if bytes.Equal(o.Request.Raw, c.Request.Raw) {
			return
		}
	}
	w.out.CSRs = append(w.out.CSRs, c)
}
