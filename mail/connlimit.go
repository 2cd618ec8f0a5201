package mail

import (
	"io"
	"net"
	"sync"
	"time"
)

// limitListener caps concurrent connections per client IP and the lifetime
// of each connection. go-smtp creates its session only at EHLO, too late to
// refuse a connection, so the cap sits under it, in Accept.
type limitListener struct {
	net.Listener
	perIP      int           // 0: no cap
	maxSession time.Duration // 0: no cap
	refused    func(ip string)

	mu    sync.Mutex
	count map[string]int
	conns map[*limitConn]struct{} // open, for closeAll
}

// refuseLine is the whole conversation with a client over its cap.
const refuseLine = "421 4.7.0 too many connections\r\n"

func newLimitListener(ln net.Listener, perIP int, maxSession time.Duration, refused func(string)) *limitListener {
	return &limitListener{Listener: ln, perIP: perIP, maxSession: maxSession, refused: refused, count: map[string]int{},
		conns: map[*limitConn]struct{}{}}
}

// Accept returns the next connection within the caps; a connection over
// its IP's cap is answered 421 and closed without reaching the server.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr())
		lc := &limitConn{Conn: &batchedReplies{Conn: c}, raw: c}
		lc.release = func() { l.release(ip, lc) }
		l.mu.Lock()
		over := l.perIP > 0 && l.count[ip] >= l.perIP
		if !over {
			l.count[ip]++
			l.conns[lc] = struct{}{}
		}
		l.mu.Unlock()
		if over {
			if l.refused != nil {
				l.refused(ip)
			}
			go refuse(c)
			continue
		}
		if l.maxSession > 0 {
			// A client that sends a command just inside every read timeout
			// would otherwise hold its slot forever (slowloris).
			lc.timer = time.AfterFunc(l.maxSession, func() { c.Close() })
		}
		return lc, nil
	}
}

func (l *limitListener) release(ip string, c *limitConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
	if l.count[ip]--; l.count[ip] <= 0 {
		delete(l.count, ip)
	}
}

// closeAll closes every open connection. go-smtp's Server.Close does
// nothing once Shutdown has begun, so a Shutdown whose deadline passes
// closes the stragglers through here.
func (l *limitListener) closeAll() {
	l.mu.Lock()
	conns := make([]*limitConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		// Closed under the server, without sending what it holds: a client
		// that stopped reading would make that wait. The server's own
		// Close of limitConn releases the slot.
		c.raw.Close()
	}
}

// refuse tells a client over its cap why, without letting a client that
// does not read hold the goroutine.
func refuse(c net.Conn) {
	t := time.AfterFunc(10*time.Second, func() { c.Close() })
	defer t.Stop()
	_, _ = io.WriteString(c, refuseLine)
	c.Close()
}

// remoteIP is the address a connection is counted under: the IP without
// the port.
func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// limitConn gives its slot back when closed, once. Its replies are sent in
// batches (batchedReplies) over raw, the accepted connection.
type limitConn struct {
	net.Conn
	raw     net.Conn
	once    sync.Once
	release func()
	timer   *time.Timer
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		if c.timer != nil {
			c.timer.Stop()
		}
		c.release()
	})
	return c.Conn.Close()
}
