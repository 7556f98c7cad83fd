module github.com/edgefleet/edgefleet

go 1.26.8

require (
	aead.dev/minisign v0.3.0
	github.com/ulikunitz/xz v0.5.17
	gopkg.in/yaml.v3 v3.0.1
)

require (
	golang.org/x/crypto v0.13.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
