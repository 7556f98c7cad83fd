package powercut

import (
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestMain removes the agents and apps the tests built (testkit.GoBuild)
// when they end.
func TestMain(m *testing.M) { testkit.Main(m) }
