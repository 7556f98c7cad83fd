// Command needscgo needs cgo: the packer must refuse it (edgefleet builds
// with CGO_ENABLED=0) and name this package as the one that pulls cgo in.
package main

/*
static int answer(void) { return 42; }
*/
import "C"

import "fmt"

var version = "dev"

func main() {
	fmt.Println(version, int(C.answer()))
}
