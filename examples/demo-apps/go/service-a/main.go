// service-a is the conference talk's "service A" in Go: a gRPC server streaming the users of a
// mocked database sorted by their GUID user_id (demo.v1.UserService/ListUsers), validating each
// record, and catching a panic on a chosen user with recover() so that it costs the user, not
// the stream. It knows nothing about Reprise: the same binary serves a client directly or
// through the sidecar.
//
//	service-a [--listen 127.0.0.1:50051] [--users 10000] [--delay-us N] [--inclusive]
//	          [--exit-after N] [--unavailable-after N] [--panic-on ID]... [--invalid ID]...
//	          [--grace 10s]
//
// It prints "listening on ADDR" once the port accepts connections and logs to stderr. The
// faults are the Rust demo-server's (examples/demo-apps/README.md): --delay-us paces every
// message; --inclusive makes after_user_id mean "from, inclusive"; --unavailable-after N ends
// a stream that has more to send after N messages with UNAVAILABLE; --exit-after N exits the
// process (code 3, no shutdown) once N messages were produced in all; --panic-on ID panics
// while producing that user (recovered, logged, skipped); --invalid ID stores that user with
// a malformed email, which validation rejects (logged, skipped). Request metadata named
// x-echo-* comes back in the response headers, and in the trailers of every error status.
// SIGTERM/SIGINT: health turns NOT_SERVING, streams in flight end with UNAVAILABLE ("server
// shutting down"), connections get --grace to finish, then the process exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	demov1 "reprise.local/demo/demov1"
	"reprise.local/demo/userdb"
)

// exitAfterCode is the exit code of an --exit-after crash (the Rust demo-server's).
const exitAfterCode = 3

// exitFlush is how long an --exit-after exit waits so the messages already sent reach the
// socket: a client that keeps up then has all N.
const exitFlush = 20 * time.Millisecond

var uuidShape = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

type ids map[string]bool

func (s ids) String() string { return fmt.Sprint(len(s), " ids") }
func (s ids) Set(v string) error {
	if !uuidShape.MatchString(v) {
		return fmt.Errorf("%q is not a user id (lowercase 8-4-4-4-12 hex)", v)
	}
	s[v] = true
	return nil
}

type server struct {
	demov1.UnimplementedUserServiceServer
	db               []*demov1.User
	byID             map[string]*demov1.User
	inclusive        bool
	delay            time.Duration
	exitAfter        int64 // < 0: never
	unavailableAfter int   // < 0: never
	panicOn          ids
	sentTotal        int64
	shutdown         chan struct{}
	exitOnce         sync.Once
}

// echoed is the request's x-echo-* metadata, sent back in headers and error trailers.
func echoed(ctx context.Context) metadata.MD {
	out := metadata.MD{}
	in, _ := metadata.FromIncomingContext(ctx)
	for k, v := range in {
		if strings.HasPrefix(k, "x-echo-") {
			out[k] = v
		}
	}
	return out
}

// validateRequest rejects what the database could never answer: an unknown role, or an
// after_user_id that is not a user id at all.
func validateRequest(req *demov1.ListUsersRequest) error {
	switch req.Role {
	case "", "admin", "member", "guest":
	default:
		return fmt.Errorf("role %q: expected admin, member, guest or empty", req.Role)
	}
	if req.AfterUserId != "" && !uuidShape.MatchString(req.AfterUserId) {
		return fmt.Errorf("after_user_id %q is not a user id", req.AfterUserId)
	}
	return nil
}

// validateUser is the talk's record validation: a bad record is logged and skipped.
func validateUser(u *demov1.User) error {
	if !uuidShape.MatchString(u.UserId) {
		return errors.New("malformed user_id")
	}
	if at := strings.IndexByte(u.Email, '@'); at <= 0 || at == len(u.Email)-1 {
		return fmt.Errorf("malformed email %q", u.Email)
	}
	if u.Name == "" {
		return errors.New("empty name")
	}
	return nil
}

// produce makes the message for one user. A panic here (--panic-on) is the talk's bug in
// service A: recover() catches it, and the stream goes on with the next user. (The talk's
// version recurses into the send loop from the deferred function; one recover per item is
// the same behaviour without the growing stack.)
func (s *server) produce(u *demov1.User) (msg *demov1.User, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			log.Printf("recovered from a panic producing user %s: %v; skipping the user", u.UserId, r)
			msg, ok = nil, false
		}
	}()
	if s.panicOn[u.UserId] {
		panic("injected by --panic-on")
	}
	if err := validateUser(u); err != nil {
		log.Printf("user %s fails validation: %v; skipping the user", u.UserId, err)
		return nil, false
	}
	return u, true
}

func (s *server) shuttingDown() bool {
	select {
	case <-s.shutdown:
		return true
	default:
		return false
	}
}

// countSent counts one message towards --exit-after and crashes the process when it would be
// one too many.
func (s *server) countSent() {
	before := atomic.AddInt64(&s.sentTotal, 1) - 1
	if s.exitAfter < 0 || before < s.exitAfter {
		return
	}
	s.exitOnce.Do(func() {
		log.Printf("--exit-after %d reached: exiting abruptly without shutdown", s.exitAfter)
		time.Sleep(exitFlush)
		os.Exit(exitAfterCode)
	})
	select {} // parked until the exit above
}

func (s *server) ListUsers(req *demov1.ListUsersRequest, stream demov1.UserService_ListUsersServer) error {
	echo := echoed(stream.Context())
	fail := func(code codes.Code, format string, args ...interface{}) error {
		stream.SetTrailer(echo)
		return status.Errorf(code, format, args...)
	}
	log.Printf("ListUsers after=%q role=%q limit=%d labels=%v", req.AfterUserId, req.Role, req.Limit, req.Labels)
	if err := validateRequest(req); err != nil {
		return fail(codes.InvalidArgument, "%v", err)
	}
	if len(echo) > 0 {
		if err := stream.SendHeader(echo); err != nil {
			return err
		}
	}
	var timer *time.Timer
	if s.delay > 0 {
		timer = time.NewTimer(s.delay)
		defer timer.Stop()
	}
	sent := 0
	for i := userdb.Start(s.db, req.AfterUserId, s.inclusive); i < len(s.db); i++ {
		u := s.db[i]
		if req.Role != "" && u.Role != req.Role {
			continue
		}
		if timer != nil {
			select {
			case <-timer.C:
			case <-s.shutdown:
			case <-stream.Context().Done():
				return status.FromContextError(stream.Context().Err()).Err()
			}
			timer.Reset(s.delay)
		}
		msg, ok := s.produce(u)
		if !ok {
			continue
		}
		// Decided after there is a message to send: a stream with nothing left ends OK, so a
		// client that resumes after an injected fault eventually completes.
		if s.shuttingDown() {
			return fail(codes.Unavailable, "server shutting down")
		}
		if s.unavailableAfter >= 0 && sent >= s.unavailableAfter {
			log.Printf("ListUsers: injecting UNAVAILABLE after %d messages", sent)
			return fail(codes.Unavailable, "injected fault after %d messages", s.unavailableAfter)
		}
		s.countSent()
		if err := stream.Send(msg); err != nil {
			return err
		}
		sent++
		if req.Limit > 0 && sent >= int(req.Limit) {
			break
		}
	}
	return nil
}

func (s *server) GetUser(ctx context.Context, req *demov1.GetUserRequest) (*demov1.User, error) {
	echo := echoed(ctx)
	if u, ok := s.byID[req.UserId]; ok {
		if len(echo) > 0 {
			_ = grpc.SetHeader(ctx, echo)
		}
		return u, nil
	}
	_ = grpc.SetTrailer(ctx, echo)
	return nil, status.Errorf(codes.NotFound, "no user %s", req.UserId)
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("service-a: ")
	listen := flag.String("listen", "127.0.0.1:50051", "address to serve on (port 0: any free port)")
	users := flag.Int("users", 10000, "users in the mocked database")
	delayUs := flag.Int("delay-us", 0, "microseconds to sleep before every streamed message")
	inclusive := flag.Bool("inclusive", false, "after_user_id means \"from this id, inclusive\"")
	exitAfter := flag.Int64("exit-after", -1, "exit(3) once this many messages were produced in all")
	unavailableAfter := flag.Int("unavailable-after", -1, "end a stream with UNAVAILABLE after this many messages")
	grace := flag.Duration("grace", 10*time.Second, "how long connections may finish after SIGTERM")
	panicOn, invalid := ids{}, ids{}
	flag.Var(panicOn, "panic-on", "panic while producing this user (recovered, skipped); repeatable")
	flag.Var(invalid, "invalid", "store this user with a malformed email (fails validation, skipped); repeatable")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "service-a: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if *users < 0 || *delayUs < 0 {
		fmt.Fprintln(os.Stderr, "service-a: --users and --delay-us must not be negative")
		os.Exit(2)
	}

	// The talk's service A sorts its data first, then streams it in that order.
	db := userdb.Users(*users)
	byID := make(map[string]*demov1.User, len(db))
	for _, u := range db {
		if invalid[u.UserId] {
			u.Email = strings.Replace(u.Email, "@", " at ", 1)
		}
		byID[u.UserId] = u
	}
	s := &server{
		db: db, byID: byID, inclusive: *inclusive, delay: time.Duration(*delayUs) * time.Microsecond,
		exitAfter: *exitAfter, unavailableAfter: *unavailableAfter, panicOn: panicOn,
		shutdown: make(chan struct{}),
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "service-a: --listen %s: %v\n", *listen, err)
		os.Exit(2)
	}
	g := grpc.NewServer()
	demov1.RegisterUserServiceServer(g, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("demo.v1.UserService", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		sig := <-sigs
		log.Printf("%v: NOT_SERVING, ending streams, %v for connections to close", sig, *grace)
		hs.Shutdown()
		close(s.shutdown)
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(*grace):
			log.Printf("grace of %v over: closing what is left", *grace)
			g.Stop()
		}
		close(done)
	}()

	fmt.Printf("listening on %s\n", lis.Addr())
	log.Printf("serving %d users on %s", len(db), lis.Addr())
	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Printf("serve: %v", err)
		os.Exit(1)
	}
	<-done
	log.Printf("stopped")
}
