package smtpclient

import (
	"errors"
	"net"
	"testing"
	"time"
)

// FuzzServerReplies: whatever a server answers (the relay is reached over
// the network), the client returns an error or goes on; it never panics
// or hangs, and a refusal it returns carries a code.
func FuzzServerReplies(f *testing.F) {
	f.Add([]byte("220 hi\r\n250-relay\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n250 2.0.0 kept\r\n"))
	f.Add([]byte("220 hi\r\n250-relay\r\n250 PIPELINING\r\n250 ok\r\n550 5.1.1 no\r\n554 no\r\n"))
	f.Add([]byte("220 hi\r\n250 relay\r\n250 ok\r\n250 ok\r\n354 go\r\n452 4.3.1 full\r\n"))
	f.Add([]byte("220-multi\r\n220 line\r\n502 no EHLO\r\n250 HELO ok\r\n"))
	f.Add([]byte("220 hi\r\n250-relay\r\n250 AUTH PLAIN\r\n334 \r\n334 !!!\r\n"))
	f.Add([]byte("2"))
	f.Fuzz(func(t *testing.T, replies []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			// Read what the client sends, so that its writes complete.
			go func() {
				b := make([]byte, 4096)
				for {
					if _, err := server.Read(b); err != nil {
						return
					}
				}
			}()
			server.Write(replies)
			server.Close()
		}()
		c, err := New(client, time.Second)
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if err := c.Hello("kms.example.com"); err != nil {
			checkRefusal(t, err)
			return
		}
		for _, to := range [][]string{{"a@example.com"}, {"a@example.com", "b@example.com"}} {
			if _, err := c.Send("kms@example.com", to, []byte("Subject: x\r\n\r\n.body\r\n")); err != nil {
				checkRefusal(t, err)
			}
		}
		checkRefusal(t, c.Reset())
	})
}

// checkRefusal fails the fuzz run for a *Reply without a code.
func checkRefusal(t *testing.T, err error) {
	var r *Reply
	if errors.As(err, &r) && (r.Code < 100 || r.Code > 999 || r.Command == "") {
		t.Fatalf("a refusal without a code or command: %#v", r)
	}
}
