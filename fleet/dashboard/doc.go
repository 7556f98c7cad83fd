// Package dashboard serves the fleet to a browser: every device, its
// history since the dashboard started, what the broker holds (channels,
// releases, assignments, rollouts with their waves) and the fleet's
// versions over time, updated live with server-sent events. Operators can
// pause, resume and abort rollouts from the page through the same code
// the CLI runs (Options.Act).
//
// The fleet is read from one MQTT subscription (Filters) fed to
// Server.Update; pages never cause broker traffic. Pushes to pages are
// coalesced: at most one event per Options.Tick carrying only the devices
// that changed.
//
// Untrusted input: every MQTT message is parsed strictly by the protocol
// package; a malformed one is dropped, counted and shown, and never
// changes the view. Device-written text (errors, notes, versions, CPU
// strings) reaches the page as JSON and is only ever put into the
// document as text (textContent), with control and bidi characters made
// visible and long strings clipped with a way to see them whole; the
// Content-Security-Policy allows no inline script.
//
// Safety: the server listens on loopback only, unless TLS and operator
// logins (a users file) are configured; it refuses requests whose Host is
// not one it serves (DNS rebinding); actions need the page's CSRF token
// in a header and a same-origin request; read-only mode refuses them.
//
// Memory: per device its latest status, presence and assignments, a
// bounded history (Options.HistoryPerDevice changes) and its cached JSON
// row; a bounded timeline (Options.TimelinePoints); the retained release
// and rollout messages. Nothing grows with time once the fleet is stable.
// A slow page is disconnected rather than buffered for (it reconnects and
// gets a fresh snapshot). A crash loses nothing: the state is rebuilt from
// the broker's retained messages.
package dashboard
