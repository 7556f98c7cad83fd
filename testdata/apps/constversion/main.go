// Command constversion declares its version as a const: go build's -X
// silently ignores it, so the packer must refuse to pack it.
package main

import "fmt"

const version = "dev"

func main() {
	fmt.Println(version)
}
