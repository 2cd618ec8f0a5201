package mail

import (
	"context"
	"errors"
	"net"
	"net/textproto"
	"sync/atomic"
	"testing"
	"time"
)

// recordingConn records each Write that reaches the network.
type recordingConn struct {
	net.Conn
	writes []string
	fail   error
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes = append(c.writes, string(p))
	return len(p), nil
}
func (c *recordingConn) Read([]byte) (int, error) { return 0, nil }
func (c *recordingConn) Close() error             { return nil }

// TestBatchedReplies: writes are held until the next Read or Close and
// then sent as one; a long burst is sent when it reaches maxHeld; a failed
// send is reported, by the Read that caused it and by later Writes.
func TestBatchedReplies(t *testing.T) {
	rec := &recordingConn{}
	c := &batchedReplies{Conn: rec}
	for _, line := range []string{"250 2.0.0 OK\r\n", "250 2.0.0 OK\r\n", "354 Go ahead\r\n"} {
		if n, err := c.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if len(rec.writes) != 0 {
		t.Fatalf("sent before the server read: %q", rec.writes)
	}
	c.Read(make([]byte, 1))
	if len(rec.writes) != 1 || rec.writes[0] != "250 2.0.0 OK\r\n250 2.0.0 OK\r\n354 Go ahead\r\n" {
		t.Fatalf("after Read: %q, want the three replies in one write", rec.writes)
	}
	c.Read(make([]byte, 1))
	if len(rec.writes) != 1 {
		t.Fatalf("an empty send: %q", rec.writes)
	}
	c.Write([]byte("221 Bye\r\n"))
	c.Close()
	if len(rec.writes) != 2 || rec.writes[1] != "221 Bye\r\n" {
		t.Fatalf("after Close: %q, want the last reply sent", rec.writes)
	}
	big := make([]byte, maxHeld)
	c.Write(big)
	if len(rec.writes) != 3 || len(rec.writes[2]) != maxHeld {
		t.Fatalf("%d writes after %d bytes held, want it sent at once", len(rec.writes), maxHeld)
	}

	broken := errors.New("connection reset")
	rec = &recordingConn{fail: broken}
	c = &batchedReplies{Conn: rec}
	c.Write([]byte("250 OK\r\n"))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, broken) {
		t.Errorf("Read after a failed send: %v, want %v", err, broken)
	}
	if _, err := c.Write([]byte("250 OK\r\n")); !errors.Is(err, broken) {
		t.Errorf("Write after a failed send: %v, want %v", err, broken)
	}
}

// countingListener counts the writes on the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// TestServerSendsPipelinedRepliesTogether: the replies to MAIL, RCPT and
// DATA sent in one packet leave the server in one write.
func TestServerSendsPipelinedRepliesTogether(t *testing.T) {
	st, _ := openStore(t)
	srv, err := NewServer(ServerConfig{Hostname: "kms.example.com", Address: kmsAddr, Store: st, Clock: fakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	go srv.Serve(cl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := textproto.NewConn(conn)
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	if err := c.PrintfLine("EHLO client.example.org"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadResponse(250); err != nil {
		t.Fatal(err)
	}
	before := cl.writes.Load()
	if _, err := conn.Write([]byte("MAIL FROM:<alice@example.com>\r\nRCPT TO:<kms@example.com>\r\nDATA\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{250, 250, 354} {
		if _, _, err := c.ReadResponse(code); err != nil {
			t.Fatal(err)
		}
	}
	if n := cl.writes.Load() - before; n != 1 {
		t.Errorf("the server wrote the three replies in %d writes, want 1", n)
	}
}
