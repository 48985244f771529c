// service-b is the conference talk's "service B" in Go: a gRPC client that streams the users
// of service A (demo.v1.UserService/ListUsers), reformats each one and stores it keyed by its
// id, an upsert, as the talk's client does. It knows nothing about Reprise: pointed at the
// sidecar instead of the server, it gets a stream that survives what it could not survive
// alone.
//
//	service-b [--target 127.0.0.1:15001] [--metadata K=V]... [--timeout 30s] users
//	          [--role R] [--limit N] [--after ID] [--label K=V]... [--slow-us N]
//	          [--record FILE] [--expect-users N] [--skip ID]...
//
// It prints one JSON line, the summary every demo client prints (examples/demo-apps/README.md),
// plus "stored": the users in its store at the end. --record appends each id as it arrives,
// one write per line, so a killed client's file is complete up to the kill. Exit code: 0 if
// the stream was exactly right, 1 if not, 2 on a usage or local error.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	demov1 "reprise.local/demo/demov1"
	"reprise.local/demo/userdb"
)

// codeNames are the gRPC status code names of the spec (grpc-go's String() is CamelCase).
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

// Summary is the line every demo client prints, field for field.
type Summary struct {
	Kind        string            `json:"kind"`
	Received    int               `json:"received"`
	Duplicates  int               `json:"duplicates"`
	OutOfOrder  int               `json:"out_of_order"`
	Missing     int               `json:"missing"`
	Unexpected  int               `json:"unexpected"`
	Corrupt     int               `json:"corrupt"`
	First       string            `json:"first"`
	Last        string            `json:"last"`
	Status      string            `json:"status"`
	Message     string            `json:"message"`
	ElapsedMs   int64             `json:"elapsed_ms"`
	Ok          bool              `json:"ok"`
	Headers     map[string]string `json:"headers"`
	Trailers    map[string]string `json:"trailers"`
	Stored      int               `json:"stored"`
}

// Record is a user as service B keeps it: reformatted for its own use.
type Record struct {
	ID        string
	Display   string // "Name <email>"
	Role      string
	CreatedAt string // RFC 3339, UTC
}

func reformat(u *demov1.User) Record {
	return Record{
		ID:        u.UserId,
		Display:   fmt.Sprintf("%s <%s>", u.Name, strings.ToLower(u.Email)),
		Role:      u.Role,
		CreatedAt: time.Unix(u.CreatedAt, 0).UTC().Format(time.RFC3339),
	}
}

type pairs []string

func (p *pairs) String() string { return strings.Join(*p, ",") }
func (p *pairs) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("expected key=value, got %q", v)
	}
	*p = append(*p, v)
	return nil
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// timeout takes a Go duration ("30s", "1m") or seconds ("2.5", as the Python client).
type timeout struct{ d time.Duration }

func (t *timeout) String() string { return t.d.String() }
func (t *timeout) Set(v string) error {
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		t.d = d
		return nil
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil && secs > 0 {
		t.d = time.Duration(secs * float64(time.Second))
		return nil
	}
	return fmt.Errorf("expected a positive duration such as 30s, got %q", v)
}

// metadataJSON is application metadata as the summary shows it: binary values as hex,
// repeated keys joined with ", ".
func metadataJSON(md metadata.MD) map[string]string {
	out := map[string]string{}
	for k, vs := range md {
		if k == "content-type" || strings.HasPrefix(k, "grpc-") || strings.HasPrefix(k, ":") {
			continue
		}
		texts := make([]string, len(vs))
		for i, v := range vs {
			if strings.HasSuffix(k, "-bin") {
				v = hex.EncodeToString([]byte(v))
			}
			texts[i] = v
		}
		out[k] = strings.Join(texts, ", ")
	}
	return out
}

type options struct {
	target   string
	metadata pairs
	timeout  timeout
	role     string
	limit    uint
	after    string
	labels   pairs
	slowUs   int
	record   string
	expect   int
	skip     list
}

func globalFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.target, "target", o.target, "host:port of the server or the sidecar (http:// accepted)")
	fs.Var(&o.metadata, "metadata", "request metadata K=V; repeatable")
	fs.Var(&o.timeout, "timeout", "deadline over the whole call (30s, or seconds)")
}

func run(o *options) (Summary, error) {
	sum := Summary{Kind: "users", Status: "OK", Headers: map[string]string{}, Trailers: map[string]string{}}
	skip := map[string]bool{}
	for _, id := range o.skip {
		skip[id] = true
	}
	var expected []string
	var byID map[string]*demov1.User
	if o.expect >= 0 {
		db := userdb.Users(o.expect)
		expected = userdb.Expected(db, o.role, o.after, int(o.limit), skip)
		byID = make(map[string]*demov1.User, len(db))
		for _, u := range db {
			byID[u.UserId] = u
		}
	}
	var record *os.File
	if o.record != "" {
		f, err := os.OpenFile(o.record, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return sum, err
		}
		defer f.Close()
		record = f
	}

	target := strings.TrimPrefix(o.target, "http://")
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		return sum, err
	}
	defer conn.Close()
	ctx := context.Background()
	if o.timeout.d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout.d)
		defer cancel()
	}
	for _, kv := range o.metadata {
		k, v, _ := strings.Cut(kv, "=")
		ctx = metadata.AppendToOutgoingContext(ctx, strings.ToLower(k), v)
	}
	req := &demov1.ListUsersRequest{AfterUserId: o.after, Role: o.role, Limit: uint32(o.limit), Labels: map[string]string{}}
	for _, kv := range o.labels {
		k, v, _ := strings.Cut(kv, "=")
		req.Labels[k] = v
	}

	store := map[string]Record{} // the talk's client upserts each user by id
	seen := map[string]bool{}
	highest, notAfter := "", 0
	started := time.Now()
	stream, err := demov1.NewUserServiceClient(conn).ListUsers(ctx, req)
	if err == nil {
		for {
			u, rerr := stream.Recv()
			if rerr != nil {
				if rerr != io.EOF {
					err = rerr
				}
				break
			}
			id := u.UserId
			if record != nil {
				if _, werr := record.WriteString(id + "\n"); werr != nil {
					return sum, werr
				}
			}
			if sum.Received == 0 {
				sum.First = id
			}
			sum.Received++
			sum.Last = id
			want := byID[id]
			if (o.role != "" && u.Role != o.role) || (want != nil && !sameUser(want, u)) {
				sum.Corrupt++
			}
			store[id] = reformat(u)
			if seen[id] {
				sum.Duplicates++
			} else {
				if highest != "" && id <= highest {
					sum.OutOfOrder++
				} else {
					highest = id
				}
				if o.after != "" && id <= o.after {
					notAfter++
				}
				seen[id] = true
			}
			if o.slowUs > 0 {
				time.Sleep(time.Duration(o.slowUs) * time.Microsecond)
			}
		}
		if md, herr := stream.Header(); herr == nil {
			sum.Headers = metadataJSON(md)
		}
		sum.Trailers = metadataJSON(stream.Trailer())
	}
	if err != nil {
		st := status.Convert(err)
		sum.Status = codeNames[st.Code()]
		if sum.Status == "" {
			sum.Status = "UNKNOWN"
		}
		sum.Message = st.Message()
	}
	if o.expect >= 0 {
		want := make(map[string]bool, len(expected))
		for _, id := range expected {
			want[id] = true
			if !seen[id] {
				sum.Missing++
			}
		}
		for id := range seen {
			if !want[id] {
				sum.Unexpected++
			}
		}
	} else {
		sum.Unexpected = notAfter
	}
	sum.ElapsedMs = time.Since(started).Milliseconds()
	sum.Stored = len(store)
	sum.Ok = sum.Status == "OK" && sum.Duplicates == 0 && sum.OutOfOrder == 0 && sum.Missing == 0 &&
		sum.Unexpected == 0 && sum.Corrupt == 0
	return sum, nil
}

func sameUser(a, b *demov1.User) bool {
	return a.UserId == b.UserId && a.Name == b.Name && a.Email == b.Email && a.Role == b.Role &&
		a.CreatedAt == b.CreatedAt
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: service-b [--target HOST:PORT] [--metadata K=V]... [--timeout 30s] users [--role R] [--limit N] [--after ID] [--label K=V]... [--slow-us N] [--record FILE] [--expect-users N] [--skip ID]...")
}

func main() {
	o := &options{target: "127.0.0.1:15001", expect: -1}
	top := flag.NewFlagSet("service-b", flag.ExitOnError)
	top.Usage = usage
	globalFlags(top, o)
	_ = top.Parse(os.Args[1:])
	if top.NArg() == 0 || top.Arg(0) != "users" {
		usage()
		os.Exit(2)
	}
	users := flag.NewFlagSet("service-b users", flag.ExitOnError)
	globalFlags(users, o) // accepted after the command too, as the Python client takes them
	users.StringVar(&o.role, "role", "", "only users of this role")
	users.UintVar(&o.limit, "limit", 0, "at most this many users (0: all)")
	users.StringVar(&o.after, "after", "", "strictly after this user id")
	users.Var(&o.labels, "label", "request label K=V; repeatable")
	users.IntVar(&o.slowUs, "slow-us", 0, "microseconds to spend on each user (a slow consumer)")
	users.StringVar(&o.record, "record", "", "append each received id to this file")
	users.IntVar(&o.expect, "expect-users", -1, "check against the server's database of N users")
	users.Var(&o.skip, "skip", "a user id the server skips (not expected); repeatable")
	_ = users.Parse(top.Args()[1:])
	if users.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "service-b: unexpected argument %q\n", users.Arg(0))
		os.Exit(2)
	}
	sum, err := run(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "service-b: %v\n", err)
		os.Exit(2)
	}
	line, _ := json.Marshal(sum)
	fmt.Println(string(line))
	if !sum.Ok {
		os.Exit(1)
	}
}
