package fleet

import (
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

// certFiles is a certificate and its key on disk (PEM).
type certFiles = testkit.Pair

// testPKI is the usual set: a CA, the broker's server certificate, two
// device certificates, an operator certificate, and a device certificate
// for dev-a from a foreign CA. TEST-ONLY, generated per test.
type testPKI struct {
	CA                     *testkit.CA
	Server                 certFiles
	DevA, DevB, Operator   certFiles
	ForeignDevA            certFiles
	ForeignCA              *testkit.CA
	OperatorWithoutOUAsDev certFiles // CN "ops-2", no OU: a device, not an operator
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := testkit.NewCA(t, dir, "fleet")
	other := testkit.NewCA(t, dir, "foreign")
	return &testPKI{
		CA:                     ca,
		Server:                 ca.Server("server"),
		DevA:                   ca.Client("dev-a", "dev-a"),
		DevB:                   ca.Client("dev-b", "dev-b"),
		Operator:               ca.Client("ops-1", "ops-1", RoleOperator),
		ForeignDevA:            other.Client("foreign-dev-a", "dev-a"),
		ForeignCA:              other,
		OperatorWithoutOUAsDev: ca.Client("ops-2", "ops-2"),
	}
}
