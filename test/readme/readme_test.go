// Package readme_test runs README.md as a new user would on a fresh clone:
// every shell command in its ```sh blocks, in order, against the kiln that
// the README's `make run` starts (on the card simulator, on a free port,
// with a temporary store), and its Go snippet through the compiler.
//
// Each command must match one entry of firstHour, which says how it runs
// (to its end, as a live tail that is then interrupted, in the background
// like the README's `&`, or as the server) and what it must print; a
// command without an entry fails the test, and so does an entry that
// matches no command, so the README and this table move together. A block
// preceded by `<!-- readme-test: skip (why) -->` is not run (it needs a
// Pi with a card). Commands run with bash in the repository's root, with
// KILN_LISTEN and KILN_DATA exported as the README tells the other
// terminal to.
//
// The `nats` commands need the nats CLI (github.com/nats-io/natscli, which
// .ci/run installs): without it they are skipped, unless
// KILN_REQUIRE_NATS_CLI=1 (CI) makes that a failure. Without a C compiler
// for the simulator the test skips, unless KILN_REQUIRE_SIM=1.
package readme_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/wait"
)

// mode is how a README command runs.
type mode int

const (
	runs       mode = iota // to its end: exit 0
	tail                   // a live tail: it prints what it must, then Ctrl-C (SIGINT) ends it
	background             // the README's `cmd &`: runs until its block ends
	server                 // `make run`: kiln, until the test ends
	skip                   // not run here (why says why)
)

// expectation is what one README command must do.
type expectation struct {
	command   *regexp.Regexp // the command as the README writes it
	mode      mode
	prints    []string // regexps that its stdout and stderr must match
	stdout    string   // runs: a regexp its stdout alone must match
	ready     string   // background: a regexp it prints once it is ready for the next command
	why       string   // skip: why not
	retry     bool     // runs: retried until it succeeds (a result stored once its job is done)
	cleanExit bool     // tail: exit 0 on Ctrl-C
	check     func(t *testing.T, root string)
	writes    []string // files it makes in the repository's root, removed afterwards

	seen bool
}

// firstHour is every command of the README and what it must do.
var firstHour = []*expectation{
	{command: regexp.MustCompile(`^make run$`), mode: server},
	{command: regexp.MustCompile(`^make test$`), mode: skip, why: "what CI runs (.ci/run); it runs this test"},
	{command: regexp.MustCompile(`^build/kiln status$`), mode: runs,
		prints: []string{`WORKER\s+STATE`, `\sready\s`, `chat/qwen3-tiny`, `image/sd15-lcm`, `QUEUE`}},
	{command: regexp.MustCompile(`^build/kiln events$`), mode: tail, cleanExit: true,
		prints: []string{` heartbeat \S+\s+ready card `}},
	{command: regexp.MustCompile(`^build/kiln chat --model qwen3-tiny .*"write a haiku"$`), mode: runs,
		prints: []string{`kiln: job \S+ submitted to chat/qwen3-tiny \(normal lane\)`}, stdout: `\S`},
	{command: regexp.MustCompile(`^echo "write a haiku" \| build/kiln chat --model qwen3-tiny .* -$`), mode: runs,
		prints: []string{`kiln: job \S+ submitted to chat/qwen3-tiny`}, stdout: `\S`},
	{command: regexp.MustCompile(`^build/kiln image "a red fox" -o fox\.png`), mode: runs,
		prints: []string{`wrote fox\.png \(\d+ bytes, image/png, \d+ ms on \S+, seed \d+, 4 steps, 512×512\)`},
		check:  pngFile("fox.png", 512, 512), writes: []string{"fox.png"}},
	{command: regexp.MustCompile(`^build/kiln chat --model qwen3-vl-tiny --image fox\.png .*"what is in it\?"$`), mode: runs,
		prints: []string{`kiln: job \S+ submitted to chat/qwen3-vl-tiny`}, stdout: `\S`},
	{command: regexp.MustCompile(`^build/kiln card info --lib build/cardsim/libaxcl_rt\.so$`), mode: runs,
		prints: []string{`runtime `, `CARD\s+ID\s+PCI`}},
	{command: regexp.MustCompile(`^build/kiln models check --lib build/cardsim/libaxcl_rt\.so build/models/\*$`), mode: runs,
		prints: []string{`serves chat jobs \(runtime llm`, `serves image jobs \(runtime sd`, `encoder_hidden_states`}},
	{command: regexp.MustCompile(`^build/kiln models check --slots 4 --lib build/cardsim/libaxcl_rt\.so build/models/qwen3-tiny$`), mode: runs,
		prints: []string{`with 4 K/V slots: 4 jobs at once`}},
	{command: regexp.MustCompile(`^build/kiln tokenize --tokenizer \S+ "hello"$`), mode: runs,
		prints: []string{`^\[\d+(,\d+)*\]\n$`}},
	{command: regexp.MustCompile(`^nats -s \$kiln sub '[^']+' &$`), mode: background, ready: `Subscribing on `,
		prints: []string{`"type":"started"`, `"type":"token"`, `"type":"result"`, `"status":"ok"`}},
	{command: regexp.MustCompile(`^nats -s \$kiln pub kiln\.jobs\.\S*qwen3-tiny\S* .*-H Nats-Msg-Id:job-1 .*-H Kiln-Reply-To:`), mode: runs,
		prints: []string{`Published \d+ bytes to "kiln\.jobs\.`}},
	{command: regexp.MustCompile(`^nats -s \$kiln stream get KILN_RESULTS --last-for \S+$`), mode: runs, retry: true,
		prints: []string{`"job_id":"job-1"`, `"status":"ok"`}},
	{command: regexp.MustCompile(`^nats -s \$kiln sub 'kiln\.events\.>'$`), mode: tail,
		prints: []string{`kiln\.events\.heartbeat\.`, `"state":"ready"`}},
	{command: regexp.MustCompile(`^curl -s \$OPENAI_BASE_URL/models$`), mode: runs,
		stdout: `"id":"qwen3-tiny","object":"model".*"kind":"chat"`},
	{command: regexp.MustCompile(`^curl -sN \$OPENAI_BASE_URL/chat/completions .*"stream":true`), mode: runs,
		stdout: `(?s)^data: \{"id":"chatcmpl-.*"object":"chat.completion.chunk".*"finish_reason":"(length|stop)".*data: \[DONE\]\n\n$`},
	{command: regexp.MustCompile(`^curl -s \$OPENAI_BASE_URL/images/generations .*"b64_json"`), mode: runs,
		stdout: `^\{"created":\d+,"data":\[\{"b64_json":"iVBORw0KGgo`},
	{command: regexp.MustCompile(`^GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -o kiln \./cmd/kiln$`), mode: runs,
		check: elf("kiln"), writes: []string{"kiln"}},
}

// command is one shell command of the README.
type command struct {
	text    string // continuation lines joined, the comment dropped
	block   int    // which ```sh block, from 0
	skipWhy string // the block's skip marker, "" when it runs
}

var skipMarker = regexp.MustCompile(`^<!-- readme-test: skip \((.+)\) -->$`)

// readme reads README.md's shell commands and Go blocks.
func readme(t *testing.T, root string) (cmds []command, goBlocks []string) {
	raw, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var lang, skipWhy, pending string
	var body []string
	block := -1
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case lang == "" && strings.HasPrefix(line, "```") && len(line) > 3:
			lang, body, skipWhy = line[3:], nil, pending
			if lang == "sh" {
				block++
			}
			pending = ""
		case lang != "" && line == "```":
			switch lang {
			case "go":
				goBlocks = append(goBlocks, strings.Join(body, "\n"))
			case "sh":
				for _, c := range shellCommands(body) {
					cmds = append(cmds, command{text: c, block: block, skipWhy: skipWhy})
				}
			}
			lang = ""
		case lang != "":
			body = append(body, line)
		default:
			if m := skipMarker.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				pending = m[1]
			} else if strings.TrimSpace(line) != "" {
				pending = ""
			}
		}
	}
	return cmds, goBlocks
}

// shellCommands joins continuation lines and drops comments.
func shellCommands(lines []string) []string {
	var out []string
	var cur strings.Builder
	for _, l := range lines {
		if cont, ok := strings.CutSuffix(strings.TrimRight(l, " "), `\`); ok {
			cur.WriteString(strings.TrimSpace(cont) + " ")
			continue
		}
		cur.WriteString(strings.TrimSpace(l))
		if c := strings.TrimSpace(dropComment(cur.String())); c != "" {
			out = append(out, c)
		}
		cur.Reset()
	}
	return out
}

// dropComment cuts a shell comment: a # that starts a word outside quotes.
func dropComment(s string) string {
	var quote rune
	for i, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i]
		}
	}
	return s
}

var assignment = regexp.MustCompile(`^(export )?[A-Za-z_][A-Za-z0-9_]*=\S*$`)

// proc is a command running in its own process group (Ctrl-C reaches
// bash and what it runs, as in a terminal).
type proc struct {
	cmd  *exec.Cmd
	out  *wait.Buffer
	done chan struct{}
	err  error
}

func start(t *testing.T, root string, env []string, script string) *proc {
	t.Helper()
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir, cmd.Env = root, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{cmd: cmd, out: &wait.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(syscall.SIGKILL, time.Second) })
	return p
}

// stop signals the process group and waits up to d for the exit.
func (p *proc) stop(sig syscall.Signal, d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("still running %v after %s", sig, d)
	}
}

// waitPrints waits until out matches every regexp of prints.
func waitPrints(t *testing.T, what string, out *wait.Buffer, prints []string, d time.Duration) {
	t.Helper()
	wait.For(t, d, 100*time.Millisecond, func() error {
		return printsAll(what, out.String(), prints)
	})
}

func printsAll(what, out string, prints []string) error {
	for _, p := range prints {
		if !regexp.MustCompile(p).MatchString(out) {
			return fmt.Errorf("%s: its output does not match %s:\n%s", what, p, out)
		}
	}
	return nil
}

func TestREADMEFirstHour(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("cc"); err != nil {
		if os.Getenv("KILN_REQUIRE_SIM") != "" {
			t.Fatal("no C compiler: `make run` cannot build the card simulator (KILN_REQUIRE_SIM is set)")
		}
		t.Skip("no C compiler for the card simulator that `make run` builds")
	}
	natsDir := natsCLI(t)
	env := testEnv(t, natsDir)

	cmds, _ := readme(t, root)
	var kiln *proc
	var shellVars []string // the block's assignments, in order
	var inBlock []struct {
		p *proc
		e *expectation
		c string
	}
	block := -1
	endBlock := func() {
		for _, b := range inBlock {
			waitPrints(t, b.c, b.p.out, b.e.prints, 30*time.Second)
			_ = b.p.stop(syscall.SIGTERM, 5*time.Second)
		}
		inBlock, shellVars = nil, nil
	}
	for _, c := range cmds {
		if c.block != block {
			endBlock()
			block = c.block
		}
		if assignment.MatchString(c.text) {
			shellVars = append(shellVars, c.text)
			continue
		}
		if c.skipWhy != "" {
			t.Logf("not run: %s (%s)", c.text, c.skipWhy)
			continue
		}
		e := find(t, c.text)
		if e == nil {
			continue
		}
		switch {
		case e.mode == skip:
			t.Logf("not run: %s (%s)", c.text, e.why)
			continue
		case strings.HasPrefix(c.text, "nats ") && natsDir == "":
			t.Logf("not run: %s (no nats CLI)", c.text)
			continue
		}
		script := strings.Join(append(shellVars, strings.TrimSuffix(c.text, "&")), "\n")
		t.Logf("$ %s", c.text)
		switch e.mode {
		case server:
			kiln = start(t, root, env, script)
			// "worker ready" comes once the models are loaded.
			waitPrints(t, c.text, kiln.out, []string{`"msg":"worker ready"`}, 5*time.Minute)
		case background:
			inBlock = append(inBlock, struct {
				p *proc
				e *expectation
				c string
			}{start(t, root, env, script), e, c.text})
			if e.ready != "" {
				waitPrints(t, c.text, inBlock[len(inBlock)-1].p.out, []string{e.ready}, 30*time.Second)
			}
		case tail:
			p := start(t, root, env, script)
			waitPrints(t, c.text, p.out, e.prints, 30*time.Second)
			err := p.stop(syscall.SIGINT, 10*time.Second)
			if e.cleanExit && err != nil {
				t.Errorf("%s: after Ctrl-C: %v\n%s", c.text, err, p.out)
			}
		case runs:
			runToEnd(t, root, env, script, c.text, e)
		}
	}
	endBlock()
	for _, e := range firstHour {
		if !e.seen {
			t.Errorf("no README command matches %s: README and test/readme disagree", e.command)
		}
	}
	if kiln == nil {
		t.Fatal("the README never starts kiln (make run)")
	}
	// Ctrl-C in make run's terminal: kiln says so and stops cleanly (make
	// itself reports the interrupt).
	_ = kiln.stop(syscall.SIGINT, 30*time.Second)
	if err := printsAll("make run, interrupted", kiln.out.String(),
		[]string{`"msg":"signal received: stopping \(again to force\)"`, `"msg":"worker stopped"`}); err != nil {
		t.Error(err)
	}
	if strings.Contains(kiln.out.String(), `"level":"ERROR"`) {
		t.Errorf("kiln logged an error:\n%s", kiln.out)
	}
}

func find(t *testing.T, text string) *expectation {
	t.Helper()
	var found *expectation
	for _, e := range firstHour {
		if e.command.MatchString(text) {
			if found != nil {
				t.Errorf("README command %q matches two entries of firstHour", text)
			}
			found = e
		}
	}
	if found == nil {
		t.Errorf("README command %q: test/readme does not know what it should print (add it to firstHour)", text)
		return nil
	}
	found.seen = true
	return found
}

func runToEnd(t *testing.T, root string, env []string, script, text string, e *expectation) {
	t.Helper()
	for _, f := range e.writes {
		path := filepath.Join(root, f)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			t.Cleanup(func() { os.Remove(path) })
		}
	}
	try := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", "-c", script)
		cmd.Dir, cmd.Env = root, env
		var stdout, out wait.Buffer
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&stdout, &out), &out
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("%s: %v\n%s", text, err, out.String())
		}
		if e.stdout != "" && !regexp.MustCompile(e.stdout).MatchString(stdout.String()) {
			return out.String(), fmt.Errorf("%s: its stdout does not match %s:\n%s", text, e.stdout, stdout.String())
		}
		return out.String(), printsAll(text, out.String(), e.prints)
	}
	var err error
	if e.retry {
		err = wait.Poll(30*time.Second, 200*time.Millisecond, func() error { _, err := try(); return err })
	} else {
		_, err = try()
	}
	if err != nil {
		t.Error(err)
		return
	}
	if e.check != nil {
		e.check(t, root)
	}
}

// testEnv is the test's environment without the kiln and NATS settings of
// the machine, plus what the README has the user export: a free port and a
// new store folder; and a free port for the HTTP gateway.
func testEnv(t *testing.T, natsDir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "NATS_") || strings.HasPrefix(name, "KILN_") && !strings.HasPrefix(name, "KILN_REQUIRE") {
			continue
		}
		if name == "PATH" && natsDir != "" {
			kv = "PATH=" + natsDir + string(os.PathListSeparator) + os.Getenv("PATH")
		}
		env = append(env, kv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	gw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gwAddr := gw.Addr().String()
	gw.Close()
	return append(env, "KILN_LISTEN="+addr, "KILN_DATA="+t.TempDir(), "KILN_GATEWAY="+gwAddr)
}

// natsCLI is the folder of the nats CLI: on PATH, else in $GOPATH/bin
// (where `go install` puts it); "" when there is none.
func natsCLI(t *testing.T) string {
	if p, err := exec.LookPath("nats"); err == nil {
		return filepath.Dir(p)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		bin := filepath.Join(strings.TrimSpace(string(out)), "bin")
		if _, err := os.Stat(filepath.Join(bin, "nats")); err == nil {
			return bin
		}
	}
	if os.Getenv("KILN_REQUIRE_NATS_CLI") != "" {
		t.Fatal("no nats CLI on PATH or in $GOPATH/bin (KILN_REQUIRE_NATS_CLI is set): go install github.com/nats-io/natscli/nats@v0.5.1")
	}
	return ""
}

// pngFile checks that name is a w×h PNG.
func pngFile(name string, w, h int) func(*testing.T, string) {
	return func(t *testing.T, root string) {
		f, err := os.Open(filepath.Join(root, name))
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		cfg, err := png.DecodeConfig(f)
		if err != nil || cfg.Width != w || cfg.Height != h {
			t.Errorf("%s: %d×%d (%v), want a %d×%d PNG", name, cfg.Width, cfg.Height, err, w, h)
		}
	}
}

// elf checks that name is a 64-bit ARM Linux executable.
func elf(name string) func(*testing.T, string) {
	return func(t *testing.T, root string) {
		b, err := os.ReadFile(filepath.Join(root, name))
		const emAArch64 = 183
		if err != nil || len(b) < 20 || string(b[:4]) != "\x7fELF" || b[4] != 2 || int(b[18])|int(b[19])<<8 != emAArch64 {
			t.Errorf("%s is not a linux/arm64 executable (%v)", name, err)
		}
	}
}

// The README's Go snippet compiles as written, inside a main function
// that gives it ctx.
func TestREADMEGoSnippetCompiles(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	_, blocks := readme(t, root)
	if len(blocks) == 0 {
		t.Fatal("README.md has no Go snippet")
	}
	for i, b := range blocks {
		src := fmt.Sprintf(snippetMain, b)
		dir := t.TempDir()
		file := filepath.Join(dir, "main.go")
		if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		// The package sits in the module (so that it imports kiln's) only
		// through the overlay: nothing is written into the repository.
		overlay := filepath.Join(dir, "overlay.json")
		fake := filepath.Join(root, "test", "readme", "snippet", "main.go")
		if err := os.WriteFile(overlay, []byte(fmt.Sprintf(`{"Replace":{%q:%q}}`, fake, file)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("go", "build", "-overlay", overlay, "-o", os.DevNull, "./test/readme/snippet")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("README Go snippet %d does not compile: %v\n%s\n%s", i+1, err, out, numbered(src))
		}
	}
}

// snippetMain wraps a README snippet: the imports a controller's program
// has, and ctx.
const snippetMain = `package main

import (
	"context"
	"fmt"
	"log"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

var (
	_ = fmt.Print
	_ = log.Print
	_ = nats.Connect
	_ = client.New
	_ = schema.KindChat
)

func main() {
	ctx := context.Background()
%s
}
`

func numbered(src string) string {
	var b strings.Builder
	for i, l := range strings.Split(src, "\n") {
		fmt.Fprintf(&b, "%3d  %s\n", i+1, l)
	}
	return b.String()
}
