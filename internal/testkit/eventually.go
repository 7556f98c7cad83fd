package testkit

import (
	"testing"
	"time"
)

// Hang bounds every wait in this package and in Eventually. It guards
// against a hung test; it asserts nothing about speed.
const Hang = 3 * time.Minute

// Eventually polls cond every 50ms until it holds, and fails t with "gave
// up waiting: what" after Hang.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Hang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
