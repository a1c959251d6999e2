// Command kiln runs and uses a kiln job queue: the embedded broker, the
// per-card workers, and the client commands that submit jobs and watch the
// fleet. `kiln help` lists the sub-commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/lmittmann/tint"
	"golang.org/x/term"

	"github.com/kiln-project/kiln/worker/npu"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one sub-command.
type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what every sub-command gets: the process's streams and settings.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	log            *slog.Logger

	logFormat string // text, json or "" (by the terminal): --log-format, $KILN_LOG_FORMAT
	debug     bool   // --debug, $KILN_DEBUG
}

// setLogger makes e.log (and slog's default) follow e.logFormat and e.debug.
func (e *env) setLogger() {
	e.log = newLogger(e.stderr, e.logFormat, e.debug)
	slog.SetDefault(e.log)
}

func commands() map[string]command {
	return map[string]command{
		"up":       {"embedded broker + one worker per card in one process (the single-Pi default)", runUp},
		"broker":   {"the embedded broker alone", runBroker},
		"worker":   {"one card's worker against any broker", runWorker},
		"gateway":  {"the OpenAI-compatible HTTP API over the queue (docs/gateway.md)", runGateway},
		"chat":     {"submit a chat job and stream the answer to stdout", runChat},
		"image":    {"submit an image job, show progress, write the PNG", runImage},
		"status":   {"the fleet: workers, state, temperatures, current job, queue depth", runStatus},
		"events":   {"live tail of heartbeat, thermal and device events", runEvents},
		"cancel":   {"cancel a queued or running job", runCancel},
		"result":   {"fetch a job's stored result", runResult},
		"card":     {"the card as the runtime sees it: info, inspect FILE", wrapCard},
		"models":   {"check [DIR...]: what kiln will do with each model package, and why it refuses one", runModels},
		"tokenize": {"token ids of text with a tokenizer (debugging, parity checks)", wrapTokenize},
		"version":  {"print the version", runVersion},
	}
}

func wrapCard(ctx context.Context, e *env, args []string) error {
	return runCard(ctx, args, e.stdout, e.stderr)
}

func wrapTokenize(ctx context.Context, e *env, args []string) error {
	return runTokenize(ctx, args, e.stdin, e.stdout, e.stderr)
}

func runVersion(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "version", "")
	if err := parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "kiln", version)
	return nil
}

func main() {
	stderr := os.Stderr
	ctx, stop := signalContext(context.Background(), func(sig os.Signal) {
		// slog's default is the command's logger (run sets it).
		slog.Info("signal received: stopping (again to force)", "signal", sig.String())
	}, forceStop)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, stderr)
	stop()
	os.Exit(code)
}

// errInterrupted is the cause of the context of a command stopped by a
// signal.
var errInterrupted = errors.New("interrupted")

// signalContext is ctx cancelled (cause errInterrupted, naming the signal)
// at the first SIGINT or SIGTERM, after notify. A second one calls force
// (nil: none); a third ends the process the default way.
func signalContext(ctx context.Context, notify func(os.Signal), force func()) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			if force == nil {
				signal.Reset(os.Interrupt, syscall.SIGTERM)
			}
			notify(sig)
			cancel(fmt.Errorf("%w by %s", errInterrupted, sigName(sig)))
		case <-done:
			return
		}
		if force == nil {
			return
		}
		select {
		case <-ch:
			signal.Reset(os.Interrupt, syscall.SIGTERM)
			force()
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// forceStop is the second signal: the cards finish the engine call they
// are in (a process killed mid-execute can wedge its card,
// card-field-notes.md §1.1), release the runtime, and the process exits 1.
// A third signal kills it at once.
func forceStop() {
	slog.Warn("second signal: stopping now; each card finishes its running engine call first (again to kill)")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := npu.CloseAll(ctx); err != nil {
		slog.Warn("forced stop: card teardown", "err", err)
	}
	os.Exit(1)
}

func sigName(sig os.Signal) string {
	switch sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr,
		logFormat: strings.ToLower(os.Getenv(envLogFormat)), debug: os.Getenv(envDebug) != ""}
	e.setLogger()
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		usage(stdout, cmds)
		return 0
	}
	if args[0] == "help" {
		if len(args) == 1 {
			usage(stdout, cmds)
			return 0
		}
		// kiln help chat = kiln chat -h
		args = append(args[1:len(args):len(args)], "-h")
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kiln: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	err := cmd.run(ctx, e, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "kiln %s: %s\n", args[0], strings.TrimPrefix(err.Error(), "kiln: "))
	return 1
}

// errUsage is returned after a flag error has been printed.
var errUsage = errors.New("usage")

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "kiln: one job queue for NPU cards on Raspberry Pis")
	fmt.Fprintln(w, "\nusage: kiln <command> [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	listSummaries(w, 9, cmds, func(c command) string { return c.summary })
	fmt.Fprintln(w, "\n`kiln help <command>` or `kiln <command> -h` shows a command's flags.")
	fmt.Fprintln(w, "\nenvironment (each the default of the flag beside it; docs/DESIGN.md §6):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range environment {
		fmt.Fprintf(tw, "  %s\t--%s\t%s\n", s.env, s.flag, s.what)
	}
	tw.Flush()
	fmt.Fprintln(w, "The card simulator reads KILN_SIM_* (test/cardsim/README.md); the broker configs in deploy/nats")
	fmt.Fprintln(w, "read KILN_NODE, KILN_CLUSTER_LISTEN, KILN_ROUTE_1..3 and KILN_LEAF_LISTEN (docs/deploy.md).")
}

// listSummaries writes one line "  NAME summary" for each entry of m, names
// sorted and padded to width: the command list and the probe list.
func listSummaries[V any](w io.Writer, width int, m map[string]V, summary func(V) string) {
	for _, n := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(w, "  %-*s %s\n", width, n, summary(m[n]))
	}
}

// newFlags returns a flag set that reports errors instead of exiting, with
// the logging flags every command has.
func newFlags(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("kiln "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: kiln %s [flags] %s\n\nflags:\n", name, args)
		fs.PrintDefaults()
	}
	fs.Func("log-format", "logs as `text` or json ($"+envLogFormat+"; default: text on a terminal, else json)", func(v string) error {
		v = strings.ToLower(v)
		if v != "text" && v != "json" {
			return fmt.Errorf("%q is neither text nor json", v)
		}
		e.logFormat = v
		e.setLogger()
		return nil
	})
	fs.BoolFunc("debug", "debug logs ($"+envDebug+")", func(v string) error {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return err
		}
		e.debug = on
		e.setLogger()
		return nil
	})
	return fs
}

// parse parses args, mapping flag errors to errUsage.
// Flags may come after positional arguments (`kiln image "a red fox" -o
// fox.png`); "--" ends the flags.
func parse(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		if stop := len(args) - fs.NArg(); stop > 0 && args[stop-1] == "--" {
			pos = append(pos, fs.Args()...)
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

// newLogger logs with tint on a terminal and JSON otherwise (journald,
// files); format "text" or "json" forces one.
func newLogger(w io.Writer, format string, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	tty := isTerminal(w)
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	case "text":
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, NoColor: !tty, TimeFormat: time.TimeOnly}))
	}
	if tty {
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly}))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
