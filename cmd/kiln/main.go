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
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	"golang.org/x/term"
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
}

func commands() map[string]command {
	return map[string]command{
		"up":       {"embedded broker + one worker per card in one process (the single-Pi default)", runUp},
		"broker":   {"the embedded broker alone", runBroker},
		"worker":   {"one card's worker against any broker", runWorker},
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

func runVersion(_ context.Context, e *env, _ []string) error {
	fmt.Fprintln(e.stdout, "kiln", version)
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, log: newLogger(stderr)}
	slog.SetDefault(e.log)
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout, cmds)
		return 0
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
	fmt.Fprintf(stderr, "kiln %s: %v\n", args[0], err)
	return 1
}

// errUsage is returned after a flag error has been printed.
var errUsage = errors.New("usage")

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "kiln: one job queue for NPU cards on Raspberry Pis")
	fmt.Fprintln(w, "\nusage: kiln <command> [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\n`kiln <command> -h` shows a command's flags. Environment: KILN_NATS_URL, KILN_LISTEN, KILN_DATA,")
	fmt.Fprintln(w, "KILN_CONFIG, KILN_AXCL_LIB, KILN_MODELS, KILN_PREFIX, KILN_LOG_FORMAT, KILN_NKEY, KILN_CLIENT_ID,")
	fmt.Fprintln(w, "KILN_TLS_CA, KILN_GOVERNOR, KILN_CARD_TEMP, KILN_SOC_TEMP, KILN_SOC_ZONE (each also a flag; docs/DESIGN.md §6).")
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("kiln "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: kiln %s [flags] %s\n\nflags:\n", name, args)
		fs.PrintDefaults()
	}
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

// newLogger logs with tint on a terminal and JSON otherwise (journald, files);
// KILN_LOG_FORMAT=text or json forces one.
func newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("KILN_DEBUG") != "" {
		level = slog.LevelDebug
	}
	tty := isTerminal(w)
	switch strings.ToLower(os.Getenv("KILN_LOG_FORMAT")) {
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
