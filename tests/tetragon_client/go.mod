module tetrapipe.test/tetragon-client

go 1.26.0

require (
	github.com/cilium/tetragon/api v1.7.0
	google.golang.org/grpc v1.80.0
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af
)

require (
	golang.org/x/net v0.52.0 // indirect
	golang.org/x/sys v0.43.0 // indirect
	golang.org/x/text v0.35.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260209200024-4cfbd4190f57 // indirect
)

// Tetragon's api module names its parent module with a local replace, which is not applied to a
// dependency; the generated client imports nothing of it, so an empty stand-in satisfies the graph.
replace github.com/cilium/tetragon => ./no-tetragon
