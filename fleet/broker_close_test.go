package fleet

import (
	"net"
	"sync"
	"testing"
	"time"
)

// TestBrokerCloseWhileClientsChurn: closing the broker while clients
// connect and leave ends (mochi's own listener close took the clients'
// read lock twice and could deadlock against a client leaving:
// broker_listen.go, closeClients). Each round closes a broker under a
// stream of raw MQTT CONNECTs and disconnects; a hang fails the round.
func TestBrokerCloseWhileClientsChurn(t *testing.T) {
	rounds := 30
	if testing.Short() {
		rounds = 5
	}
	connect := []byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 4, 'c', 'h', 'u', '0'}
	for r := 0; r < rounds; r++ {
		b, err := StartBroker(BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logf: func(string, ...any) {}})
		if err != nil {
			t.Fatal(err)
		}
		addr := b.Addr()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				msg := append([]byte(nil), connect...)
				msg[len(msg)-1] = byte('0' + w)
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						continue
					}
					c.SetDeadline(time.Now().Add(time.Second))
					c.Write(msg)
					var ack [4]byte
					c.Read(ack[:])
					c.Close() // the client leaves: mochi deletes it
				}
			}(w)
		}
		time.Sleep(20 * time.Millisecond)
		closed := make(chan struct{})
		go func() { b.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(time.Minute):
			close(stop)
			t.Fatalf("round %d: Broker.Close did not return in a minute with clients connecting and leaving (deadlocked)", r)
		}
		close(stop)
		wg.Wait()
	}
}

// The listener's Close disconnects its clients itself, never through
// mochi's CloseFn (whose Clients.GetByListener can deadlock, mochi-mqtt/
// server issue 488): the churn above rarely hits that window, this shows
// the path is gone.
func TestListenerCloseDisconnectsItsClients(t *testing.T) {
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	c := connect(t, b.URL(), "", "", "closer")
	l, ok := b.srv.Listeners.Get("tcp")
	if !ok {
		t.Fatal("no tcp listener")
	}
	l.Close(func(id string) {
		t.Errorf("mochi's CloseFn (Clients.GetByListener) was called for listener %s", id)
	})
	for deadline := time.Now().Add(30 * time.Second); c.IsConnectionOpen(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client of the closed listener is still connected after 30 s")
		}
	}
}
