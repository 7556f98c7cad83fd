// Package fleet is the operator side of edgefleet over MQTT: the embedded
// broker (mochi-mqtt, with users, client certificates and ACLs), publishing
// and retiring releases as retained messages, assigning a release to one
// device, and the fleet status view built from the devices' retained
// status messages. The wire format is protocol/SPEC.md §MQTT.
//
// # Promises
//
//   - Nothing is published that has not verified: PublishBundle checks the
//     signature, expiry, every chunk, the payload hash and the decoded
//     executable before the first chunk goes out, and publishes the release
//     envelope only after every chunk was acknowledged by the broker.
//   - Memory: publishing holds at most InFlight chunks; the broker holds
//     retained messages in memory (mochi) and on disk (bbolt under --data).
//   - Untrusted input: status and envelope messages read from the broker
//     are parsed strictly; a malformed one is dropped and counted, never a
//     crash.
//   - Crashes: the broker persists retained messages on every publish (a
//     bbolt transaction each), so releases survive a broker restart or power
//     loss; sessions are not persisted (devices re-subscribe on connect).
//   - Without --users or --client-ca the broker refuses to listen on
//     anything but loopback.
//   - Unauthenticated clients: a connection that has not sent its CONNECT
//     within ConnectTimeout is closed; every password login, for a known
//     user or not, costs one bcrypt comparison, and at most
//     MaxConcurrentLogins run at once. A device's client id must be its
//     user name or certificate CN, so it cannot close another device's
//     session.
package fleet
