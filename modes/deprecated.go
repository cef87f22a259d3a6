package modes

// Source is Layer.
//
// Deprecated: use Layer. This alias goes in the next release.
type Source = Layer

// The layers under their old names.
//
// Deprecated: use the Layer constants. These go in the next release.
const (
	SourceUpstream            = LayerUpstream
	SourceUpstreamOverride    = LayerUpstreamOverride
	SourceInstance            = LayerInstance
	SourceUpstreamDefaults    = LayerUpstreamDefaults
	SourceServiceDefaults     = LayerServiceDefaults
	SourceProxyDefaults       = LayerProxyDefaults
	SourceDestinationDefaults = LayerDestinationDefaults
	SourceDefault             = LayerDefault
)
