package smime

import (
	"encoding/asn1"
	"fmt"
)

// Bounds on CMS input. The wrapped pkcs7 library converts BER to DER
// recursively and without limits; every CMS object is checked (and
// converted) here first, so that absurd input is refused before it reaches
// the library.
const (
	// MaxCMSBytes is the largest CMS object (DER or BER) accepted.
	MaxCMSBytes = 8 << 20
	// MaxBERDepth is the deepest nesting of ASN.1 elements accepted. Real
	// S/MIME objects nest about 12 deep (an extension inside a certificate
	// inside SignedData).
	MaxBERDepth = 32
	// maxBERElements bounds the number of ASN.1 elements in one object, and
	// with it the memory a parse can take. A signed message with a
	// three-certificate chain has about 1,000; streamed content adds one per
	// chunk.
	maxBERElements = 100000
)

// berNode is one ASN.1 element of a parsed BER object.
type berNode struct {
	tag         []byte // identifier octets as received
	constructed bool
	content     []byte     // primitive content
	children    []*berNode // constructed content
	derLen      int        // length of the DER content, set by computeDER
}

type berParser struct {
	elements int
}

// parseBER parses one complete BER element (with nothing after it) and
// returns it with indefinite lengths resolved and constructed OCTET STRINGs
// joined, so that appendDER can write it as DER.
func parseBER(in []byte) (*berNode, error) {
	if len(in) > MaxCMSBytes {
		return nil, fmt.Errorf("%w: CMS object is %d bytes, the limit is %d", ErrLimit, len(in), MaxCMSBytes)
	}
	var p berParser
	n, rest, err := p.parse(in, 0)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes of trailing data after the CMS object", ErrMalformed, len(rest))
	}
	return n, nil
}

func (p *berParser) parse(b []byte, depth int) (*berNode, []byte, error) {
	if depth > MaxBERDepth {
		return nil, nil, fmt.Errorf("%w: ASN.1 nesting deeper than %d", ErrLimit, MaxBERDepth)
	}
	p.elements++
	if p.elements > maxBERElements {
		return nil, nil, fmt.Errorf("%w: more than %d ASN.1 elements", ErrLimit, maxBERElements)
	}
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("%w: truncated ASN.1 element", ErrMalformed)
	}
	if b[0] == 0 {
		return nil, nil, fmt.Errorf("%w: unexpected end-of-contents marker", ErrMalformed)
	}
	i := 1
	if b[0]&0x1f == 0x1f { // high tag number form
		for {
			if i >= len(b) {
				return nil, nil, fmt.Errorf("%w: truncated ASN.1 tag", ErrMalformed)
			}
			c := b[i]
			i++
			if i > 5 {
				return nil, nil, fmt.Errorf("%w: ASN.1 tag number too large", ErrMalformed)
			}
			if c&0x80 == 0 {
				break
			}
		}
	}
	n := &berNode{tag: b[:i], constructed: b[0]&0x20 != 0}
	if i >= len(b) {
		return nil, nil, fmt.Errorf("%w: truncated ASN.1 length", ErrMalformed)
	}
	l := b[i]
	i++
	indefinite := false
	length := 0
	switch {
	case l < 0x80:
		length = int(l)
	case l == 0x80:
		if !n.constructed {
			return nil, nil, fmt.Errorf("%w: indefinite length on a primitive ASN.1 element", ErrMalformed)
		}
		indefinite = true
	case l == 0xff:
		return nil, nil, fmt.Errorf("%w: reserved ASN.1 length octet", ErrMalformed)
	default:
		k := int(l & 0x7f)
		if k > 4 {
			return nil, nil, fmt.Errorf("%w: ASN.1 length of %d octets", ErrLimit, k)
		}
		if i+k > len(b) {
			return nil, nil, fmt.Errorf("%w: truncated ASN.1 length", ErrMalformed)
		}
		for _, c := range b[i : i+k] {
			length = length<<8 | int(c)
		}
		i += k
	}
	body := b[i:]
	if !indefinite {
		if length > len(body) {
			return nil, nil, fmt.Errorf("%w: ASN.1 length %d exceeds the %d bytes available", ErrMalformed, length, len(body))
		}
		body, rest := body[:length], body[length:]
		if !n.constructed {
			n.content = body
			return n, rest, nil
		}
		for len(body) > 0 {
			child, r, err := p.parse(body, depth+1)
			if err != nil {
				return nil, nil, err
			}
			n.children = append(n.children, child)
			body = r
		}
		j, err := n.joinOctets()
		return j, rest, err
	}
	for {
		if len(body) >= 2 && body[0] == 0 && body[1] == 0 {
			j, err := n.joinOctets()
			return j, body[2:], err
		}
		if len(body) == 0 {
			return nil, nil, fmt.Errorf("%w: indefinite-length ASN.1 element without end-of-contents", ErrMalformed)
		}
		child, r, err := p.parse(body, depth+1)
		if err != nil {
			return nil, nil, err
		}
		n.children = append(n.children, child)
		body = r
	}
}

// joinOctets turns a constructed OCTET STRING (BER streaming) into the
// primitive one DER requires. Other elements are returned unchanged.
func (n *berNode) joinOctets() (*berNode, error) {
	if len(n.tag) != 1 || n.tag[0] != 0x24 {
		return n, nil
	}
	size := 0
	for _, c := range n.children {
		if len(c.tag) != 1 || c.tag[0] != 0x04 {
			return nil, fmt.Errorf("%w: constructed OCTET STRING holds a non-OCTET STRING element", ErrMalformed)
		}
		size += len(c.content)
	}
	joined := make([]byte, 0, size)
	for _, c := range n.children {
		joined = append(joined, c.content...)
	}
	return &berNode{tag: []byte{0x04}, content: joined}, nil
}

// computeDER sets derLen on n and its descendants and returns the length of
// n's complete DER encoding.
func (n *berNode) computeDER() int {
	if n.constructed {
		n.derLen = 0
		for _, c := range n.children {
			n.derLen += c.computeDER()
		}
	} else {
		n.derLen = len(n.content)
	}
	return len(n.tag) + lengthOctets(n.derLen) + n.derLen
}

func lengthOctets(l int) int {
	if l < 0x80 {
		return 1
	}
	k := 1
	for ; l > 0; l >>= 8 {
		k++
	}
	return k
}

func (n *berNode) appendDER(out []byte) []byte {
	out = append(out, n.tag...)
	if n.derLen < 0x80 {
		out = append(out, byte(n.derLen))
	} else {
		k := lengthOctets(n.derLen) - 1
		out = append(out, 0x80|byte(k))
		for s := (k - 1) * 8; s >= 0; s -= 8 {
			out = append(out, byte(n.derLen>>s))
		}
	}
	if !n.constructed {
		return append(out, n.content...)
	}
	for _, c := range n.children {
		out = c.appendDER(out)
	}
	return out
}

// toDER parses BER input within the limits and returns its DER form and the
// CMS content type (the OID that starts a ContentInfo).
func toDER(in []byte) ([]byte, asn1.ObjectIdentifier, error) {
	if len(in) <= MaxCMSBytes {
		var w derWalker
		if rest, ok := w.element(in, 0); ok && len(rest) == 0 {
			// Already DER, as nearly every mail client writes it: the
			// conversion would return the same bytes (a parse tree of
			// ~10 KB, 7% of what the daemon allocates a renewal).
			return contentInfoType(in)
		}
	}
	return toDERSlow(in)
}

// toDERSlow is toDER by way of a parse tree, for BER.
func toDERSlow(in []byte) ([]byte, asn1.ObjectIdentifier, error) {
	n, err := parseBER(in)
	if err != nil {
		return nil, nil, err
	}
	size := n.computeDER()
	return contentInfoType(n.appendDER(make([]byte, 0, size)))
}

// contentInfoType checks that der starts like a ContentInfo (a SEQUENCE
// whose first element is an OID) and returns it with that OID.
func contentInfoType(der []byte) ([]byte, asn1.ObjectIdentifier, error) {
	var raw asn1.RawValue
	if _, err := asn1.Unmarshal(der, &raw); err != nil || raw.FullBytes[0] != 0x30 || len(raw.Bytes) == 0 || raw.Bytes[0] != 0x06 {
		return nil, nil, fmt.Errorf("%w: not a CMS ContentInfo", ErrMalformed)
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(raw.Bytes, &oid); err != nil {
		return nil, nil, fmt.Errorf("%w: bad CMS content type: %v", ErrMalformed, err)
	}
	return der, oid, nil
}

// derWalker checks, without allocating, that its input is what
// toDERSlow would return unchanged: every element within the same limits as
// berParser, every length definite and in its shortest form, and no
// constructed OCTET STRING. It accepts nothing berParser refuses.
type derWalker struct {
	elements int
}

// element walks one element of b and returns what follows it; ok is false
// when the element is not DER as toDERSlow would write it, or beyond a
// limit (toDERSlow then gives the precise error).
func (w *derWalker) element(b []byte, depth int) (rest []byte, ok bool) {
	w.elements++
	if depth > MaxBERDepth || w.elements > maxBERElements || len(b) < 2 || b[0] == 0 {
		return nil, false
	}
	i := 1
	if b[0]&0x1f == 0x1f { // high tag number form
		for {
			if i >= len(b) || i >= 5 {
				return nil, false
			}
			c := b[i]
			i++
			if c&0x80 == 0 {
				break
			}
		}
	}
	constructed := b[0]&0x20 != 0
	if i == 1 && b[0] == 0x24 { // a constructed OCTET STRING is joined
		return nil, false
	}
	if i >= len(b) {
		return nil, false
	}
	l := int(b[i])
	i++
	length := 0
	switch {
	case l < 0x80:
		length = l
	case l == 0x80 || l == 0xff:
		return nil, false // indefinite, or reserved
	default:
		k := l & 0x7f
		if k > 4 || i+k > len(b) || b[i] == 0 { // leading zero: not shortest
			return nil, false
		}
		for _, c := range b[i : i+k] {
			length = length<<8 | int(c)
		}
		i += k
		if length < 0x80 || lengthOctets(length) != k+1 {
			return nil, false
		}
	}
	if length > len(b)-i {
		return nil, false
	}
	body, rest := b[i:i+length], b[i+length:]
	if constructed {
		for len(body) > 0 {
			if body, ok = w.element(body, depth+1); !ok {
				return nil, false
			}
		}
	}
	return rest, true
}
