module github.com/meshgate/meshgate

go 1.26.8

require (
	github.com/stretchr/testify v1.12.1
	golang.org/x/crypto v0.58.0
)

require go.yaml.in/yaml/v3 v3.0.6 // indirect
