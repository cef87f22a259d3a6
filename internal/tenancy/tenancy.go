// Package tenancy holds the one rule every package applies to Consul's
// namespaces and admin partitions: an empty name means "default".
package tenancy

// Default is the name of the default namespace and of the default admin
// partition, which Consul CE always uses.
const Default = "default"

// OrDefault returns name, or Default when name is empty.
func OrDefault(name string) string {
	if name == "" {
		return Default
	}
	return name
}
