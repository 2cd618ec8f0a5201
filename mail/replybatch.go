package mail

import (
	"net"
	"sync"
)

// batchedReplies is a server connection that holds what the server writes
// until the server next reads, and then sends it in one write: the
// replies to pipelined commands leave in one packet. RFC 2920 section 3.2
// says a server offering PIPELINING should keep the responses to grouped
// commands so that they can be sent as a unit, and must send all pending
// responses as soon as its input buffer is empty: go-smtp reads from the
// connection only when its own buffer is empty, and that read sends them.
//
// go-smtp writes and flushes each reply line itself. A client that
// pipelines (Postfix towards a server that offers PIPELINING) sends MAIL,
// RCPT and DATA in one packet and got three packets back, each a write
// system call here and a wake-up there; with the replies held, it gets
// one.
//
// Nothing is held while the server waits for the client: every Read sends
// what is held first, as does Close. A server that writes and then does
// something long without reading (committing a message) holds its reply
// meanwhile, which changes nothing for the client, which waits for the
// reply anyway.
type batchedReplies struct {
	net.Conn
	mu   sync.Mutex
	held []byte
	err  error // a failed send, returned by the next Write
}

// maxHeld bounds what is held: beyond it, Write sends at once. SMTP
// replies are a few lines; only a long EHLO reply comes near.
const maxHeld = 16 << 10

func (c *batchedReplies) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.held = append(c.held, p...)
	if len(c.held) >= maxHeld {
		if err := c.sendLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Read sends what is held, then reads.
func (c *batchedReplies) Read(p []byte) (int, error) {
	if err := c.send(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

// Close sends what is held (a 221 or 421 last word), then closes.
func (c *batchedReplies) Close() error {
	c.send()
	return c.Conn.Close()
}

func (c *batchedReplies) send() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendLocked()
}

func (c *batchedReplies) sendLocked() error {
	if c.err != nil || len(c.held) == 0 {
		return c.err
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	c.err = err
	return err
}
