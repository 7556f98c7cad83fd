package fleet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ClientOptions says how an operator command connects to the broker.
type ClientOptions struct {
	// Broker is the URL: tcp://host:1883 or ssl://host:8883. Required.
	// Several, separated by commas, are tried in order and the first that
	// accepts the connection is used (at most MaxBrokers).
	Broker string
	// Username and Password authenticate against a users file.
	Username, Password string
	// CA (PEM) verifies the broker's certificate; Cert and Key (PEM) are a
	// client certificate.
	CA, Cert, Key string
	// ClientID defaults to "edgefleet-op-<random>".
	ClientID string
	// ConnectTimeout defaults to 10s, per broker tried.
	ConnectTimeout time.Duration
	// WillTopic and WillPayload, when set, are the connection's last will
	// (retained, QoS 1): the rollout driver's presence says it is gone.
	WillTopic   string
	WillPayload []byte
	// OnConnectionLost, when set, is called once if the connection drops.
	OnConnectionLost func(error)
}

// Validate checks the options and fills defaults.
func (o *ClientOptions) Validate() error {
	if (o.Cert == "") != (o.Key == "") {
		return errors.New("a client certificate needs both --cert and --key")
	}
	if err := o.checkBrokers(); err != nil { // client_failover.go
		return err
	}
	if o.ClientID == "" {
		var b [6]byte
		rand.Read(b[:])
		o.ClientID = "edgefleet-op-" + hex.EncodeToString(b[:])
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	return nil
}

// TLSConfig builds a client TLS configuration from CA/cert/key files; nil
// when none is set.
func TLSConfig(ca, cert, key string) (*tls.Config, error) {
	if ca == "" && cert == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("broker CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker CA %s holds no PEM certificate", ca)
		}
		conf.RootCAs = pool
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return conf, nil
}

// Connect opens an operator connection (clean session, no auto reconnect:
// operator commands are short and say when the broker goes away).
func Connect(ctx context.Context, o ClientOptions) (paho.Client, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tlsConf, err := TLSConfig(o.CA, o.Cert, o.Key)
	if err != nil {
		return nil, err
	}
	po := paho.NewClientOptions().
		SetClientID(o.ClientID).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(true).
		SetConnectTimeout(o.ConnectTimeout).
		SetKeepAlive(30 * time.Second).
		SetWriteTimeout(30 * time.Second).
		SetMaxResumePubInFlight(64)
	brokers := o.Brokers()
	for _, b := range brokers {
		po.AddBroker(b) // paho tries them in order and keeps the first that accepts
	}
	attempts := &brokerAttempts{}
	po.SetConnectionNotificationHandler(attempts.handler)
	if o.Username != "" {
		po.SetUsername(o.Username).SetPassword(o.Password)
	}
	if tlsConf != nil {
		po.SetTLSConfig(tlsConf)
	}
	if o.WillTopic != "" {
		po.SetBinaryWill(o.WillTopic, o.WillPayload, 1, true)
	}
	if o.OnConnectionLost != nil {
		po.SetConnectionLostHandler(func(_ paho.Client, err error) { o.OnConnectionLost(err) })
	}
	c := paho.NewClient(po)
	if err := wait(ctx, c.Connect(), o.ConnectTimeout*time.Duration(len(brokers))); err != nil {
		if len(brokers) > 1 {
			return nil, fmt.Errorf("cannot connect to any of %d brokers (%s) (are they running, and are the credentials right?): %w", len(brokers), attempts, err)
		}
		return nil, fmt.Errorf("cannot connect to the broker at %s (is it running, and are the credentials right?): %w", o.Broker, err)
	}
	attempts.mu.Lock()
	connectedTo.Store(c, attempts.trying)
	attempts.mu.Unlock()
	return c, nil
}

// wait waits for a paho token, the context, or timeout (0: none).
func wait(ctx context.Context, t paho.Token, timeout time.Duration) error {
	var tc <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		tc = tm.C
	}
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-tc:
		return errors.New("timed out waiting for the broker")
	}
}
