// tetragon-client: a test client of tetrapipe's gRPC API built from Tetragon's own generated Go
// code (module github.com/cilium/tetragon/api), so the wire format is checked by Tetragon's
// client, not by a client made from our copy of the .proto. Prints what it got as JSON lines
// (protojson with Tetragon's proto field names). Built by scripts/setup-tetragon-client.sh;
// driven by tests/test_grpc_api.py.
//
//	tetragon-client -address HOST:PORT health|version|list
//	tetragon-client -address HOST:PORT add FILE.yaml
//	tetragon-client -address HOST:PORT delete NAME
//	tetragon-client -address HOST:PORT -request '{"allow_list":[...]}' -count N -timeout S events
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cilium/tetragon/api/v1/tetragon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

var marshal = protojson.MarshalOptions{UseProtoNames: true}

// unknownFields lists the paths of fields the generated code did not know: a field number we
// send that Tetragon's .proto does not have (or has with another wire type) shows up here.
func unknownFields(m protoreflect.Message, path string, out *[]string) {
	if len(m.GetUnknown()) > 0 {
		*out = append(*out, path)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				unknownFields(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i), out)
			}
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					unknownFields(mv.Message(), p+"["+k.String()+"]", out)
					return true
				})
			}
		case fd.Message() != nil:
			unknownFields(v.Message(), p, out)
		}
		return true
	})
}

type line struct {
	Call    string          `json:"call"`
	Message json.RawMessage `json:"message,omitempty"`
	Unknown []string        `json:"unknown_fields"`
	Error   string          `json:"error,omitempty"`
}

func emit(call string, m proto.Message, err error) {
	l := line{Call: call, Unknown: []string{}}
	if err != nil {
		l.Error = err.Error()
	} else {
		b, merr := marshal.Marshal(m)
		if merr != nil {
			fail("marshal: %v", merr)
		}
		l.Message = b
		unknownFields(m.ProtoReflect(), "", &l.Unknown)
	}
	b, _ := json.Marshal(l)
	fmt.Println(string(b))
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "tetragon-client: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	address := flag.String("address", "localhost:54321", "server address (host:port or unix:///path)")
	request := flag.String("request", "{}", "GetEventsRequest as protojson")
	count := flag.Int("count", 0, "events: stop after this many (0: until -timeout)")
	timeout := flag.Duration("timeout", 30*time.Second, "time limit of the whole call")
	flag.Parse()
	if flag.NArg() < 1 {
		fail("usage: tetragon-client [flags] health|version|list|add FILE|delete NAME|events")
	}
	conn, err := grpc.NewClient(*address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("connect %s: %v", *address, err)
	}
	defer conn.Close()
	client := tetragon.NewFineGuidanceSensorsClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch cmd := flag.Arg(0); cmd {
	case "health":
		r, err := client.GetHealth(ctx, &tetragon.GetHealthStatusRequest{}, grpc.WaitForReady(true))
		emit(cmd, r, err)
	case "version":
		r, err := client.GetVersion(ctx, &tetragon.GetVersionRequest{}, grpc.WaitForReady(true))
		emit(cmd, r, err)
	case "list":
		r, err := client.ListTracingPolicies(ctx, &tetragon.ListTracingPoliciesRequest{})
		emit(cmd, r, err)
	case "add":
		yaml, err := os.ReadFile(flag.Arg(1))
		if err != nil {
			fail("%v", err)
		}
		r, err := client.AddTracingPolicy(ctx, &tetragon.AddTracingPolicyRequest{Yaml: string(yaml)})
		emit(cmd, r, err)
	case "delete":
		r, err := client.DeleteTracingPolicy(ctx, &tetragon.DeleteTracingPolicyRequest{Name: flag.Arg(1)})
		emit(cmd, r, err)
	case "events":
		events(ctx, client, *request, *count)
	default:
		fail("unknown command %q", cmd)
	}
}

func events(ctx context.Context, client tetragon.FineGuidanceSensorsClient, request string, count int) {
	req := &tetragon.GetEventsRequest{}
	if err := protojson.Unmarshal([]byte(request), req); err != nil {
		fail("-request: %v", err)
	}
	stream, err := client.GetEvents(ctx, req, grpc.WaitForReady(true))
	if err != nil {
		emit("events", nil, err)
		return
	}
	// the server sends its headers once its position in the topic is fixed: from here on,
	// events made are streamed; the test waits for this line before it makes them
	if _, err := stream.Header(); err != nil {
		emit("events", nil, err)
		return
	}
	fmt.Fprintln(os.Stderr, "streaming")
	for n := 0; count == 0 || n < count; n++ {
		r, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				emit("events", nil, err)
			}
			return
		}
		emit("events", r, nil)
	}
}
