// Command ferretdb is Prism's development MongoDB-wire-protocol server: FerretDB v1 (the
// embeddable package github.com/FerretDB/FerretDB/ferretdb) on its PostgreSQL backend, plus two
// small client subcommands that dev/stack uses to probe it (MongoDB wire protocol, BSON from the
// official Go driver's bson package).
//
//	ferretdb serve   [-listen-addr HOST:PORT] [-postgresql-url URL] [-log-level LEVEL]
//	ferretdb ping    [-addr HOST:PORT] [-timeout D]   exit 0 once the server answers `ping` (which also checks PostgreSQL)
//	ferretdb version [-addr HOST:PORT] [-timeout D]   print e.g. "FerretDB v1.24.2 (MongoDB 7.0.42 wire)"
//
// This wrapper exists because `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`
// builds a binary that panics at start (its version.txt is generated, not in the module zip);
// the embeddable package does not need it. Embedded FerretDB keeps its state in memory, runs no
// telemetry reporter and no debug HTTP server, and reports its own version as "unknown", so the
// version printed here comes from this binary's Go build information instead.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/bson"
)

const ferretModule = "github.com/FerretDB/FerretDB"

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}

	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "ping":
		err = ping(args)
	case "version":
		err = version(args)
	default:
		err = fmt.Errorf("unknown subcommand %q (serve, ping, version)", cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// ferretVersion is the version of the FerretDB module linked into this binary.
func ferretVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path != ferretModule {
			continue
		}
		if d.Replace != nil {
			return d.Replace.Version + " (replaced)"
		}
		return d.Version
	}
	return "unknown"
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	pgURL := fs.String("postgresql-url", "postgres://127.0.0.1:5432/ferretdb", "PostgreSQL backend URL")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	grace := fs.Duration("shutdown-timeout", 20*time.Second, "exit anyway if connections have not closed this long after SIGTERM")
	_ = fs.Parse(args)

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       "postgresql",
		PostgreSQLURL: *pgURL,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal now terminates the process at once
		logger.Info("shutting down")
		time.Sleep(*grace)
		logger.Error("connections did not close in time; exiting anyway", "after", grace.String())
		os.Exit(1)
	}()

	logger.Info("FerretDB starting", "version", ferretVersion(), "listen", *listen,
		"backend", "postgresql", "postgresql", redact(*pgURL))
	if err := f.Run(ctx); err != nil { // blocks until ctx is cancelled
		return err
	}
	logger.Info("FerretDB stopped")
	return nil
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

func clientFlags(name string, args []string) (addr *string, timeout *time.Duration) {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	addr = fs.String("addr", "127.0.0.1:27017", "server address HOST:PORT")
	timeout = fs.Duration("timeout", 2*time.Second, "give up after this long")
	_ = fs.Parse(args)
	return addr, timeout
}

// runCommand sends one command to database admin as an OP_MSG on a fresh connection and decodes
// the reply into out. It deliberately does not use a full driver client: a driver opens several
// connections (monitor and pool) and ends its implicit sessions with `endSessions`, which FerretDB
// v1 does not implement and logs as a warning: too noisy for a probe polled every half second.
func runCommand(addr string, timeout time.Duration, cmd bson.D, out any) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}

	body, err := bson.Marshal(append(cmd, bson.E{Key: "$db", Value: "admin"}))
	if err != nil {
		return err
	}
	const opMsg = 2013
	msg := make([]byte, 16, 16+4+1+len(body))
	binary.LittleEndian.PutUint32(msg[4:], 1) // requestID
	binary.LittleEndian.PutUint32(msg[12:], opMsg)
	msg = append(msg, 0, 0, 0, 0) // flagBits
	msg = append(msg, 0)          // section kind 0: body
	msg = append(msg, body...)
	binary.LittleEndian.PutUint32(msg[0:], uint32(len(msg)))
	if _, err := conn.Write(msg); err != nil {
		return err
	}

	var hdr [16]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}
	size := binary.LittleEndian.Uint32(hdr[0:])
	if op := binary.LittleEndian.Uint32(hdr[12:]); op != opMsg || size < 16+4+1+5 || size > 48<<20 {
		return fmt.Errorf("unexpected reply (opcode %d, %d bytes)", op, size)
	}
	rest := make([]byte, size-16)
	if _, err := io.ReadFull(conn, rest); err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}
	if rest[4] != 0 {
		return fmt.Errorf("unexpected reply section kind %d", rest[4])
	}
	doc := bson.Raw(rest[5:])
	docLen := binary.LittleEndian.Uint32(doc)
	if int(docLen) > len(doc) {
		return errors.New("truncated reply document")
	}
	doc = doc[:docLen]

	var status struct {
		OK     float64 `bson:"ok"`
		Code   int32   `bson:"code"`
		ErrMsg string  `bson:"errmsg"`
	}
	if err := bson.Unmarshal(doc, &status); err != nil {
		return err
	}
	if status.OK != 1 {
		return fmt.Errorf("%s failed: %s (code %d)", cmd[0].Key, status.ErrMsg, status.Code)
	}
	return bson.Unmarshal(doc, out)
}

// ping runs MongoDB's `ping` command; FerretDB answers it only after checking its backend.
func ping(args []string) error {
	addr, timeout := clientFlags("ping", args)
	var res struct{}
	if err := runCommand(*addr, *timeout, bson.D{{Key: "ping", Value: 1}}, &res); err != nil {
		return err
	}
	fmt.Println("ok")
	return nil
}

// version prints the FerretDB version of this binary and the MongoDB version the server
// claims in `buildInfo` (the wire-compatibility level drivers see).
func version(args []string) error {
	addr, timeout := clientFlags("version", args)
	var res struct {
		Version string `bson:"version"`
	}
	if err := runCommand(*addr, *timeout, bson.D{{Key: "buildInfo", Value: 1}}, &res); err != nil {
		return err
	}
	fmt.Printf("FerretDB %s (MongoDB %s wire)\n", ferretVersion(), res.Version)
	return nil
}
