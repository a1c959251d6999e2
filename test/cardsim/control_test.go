package cardsim

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// The exported controls reach the same simulator the card calls go to, and undo what they
// changed when the test that changed it ends.
func TestControls(t *testing.T) {
	c := openCard(t, "")
	ctl := Controls(t)
	if ctl.Library() != Library(t) {
		t.Fatalf("Controls().Library() = %s, Library() = %s", ctl.Library(), Library(t))
	}
	if n := ctl.SizeofProps(); n != 240 {
		t.Fatalf("SizeofProps() = %d, want 240", n)
	}
	ctl.SetTempC(61)
	if mc := ctl.TempMC(c.dev); mc < 60900 || mc > 61100 {
		t.Fatalf("TempMC(%d) = %d after SetTempC(61)", c.dev, mc)
	}
	if mc := ctl.TempMC(99); mc != -1 {
		t.Fatalf("TempMC(99) = %d for a device that does not exist, want -1", mc)
	}

	// The subtests run on goroutines of their own: each binds the card's context to its thread.
	onCard := func(t *testing.T) {
		runtime.LockOSThread() // never unlocked: the thread exits with the subtest
		if r := c.SetCurrentContext(c.ctx); r != 0 {
			t.Fatalf("bind context: %#x", code(r))
		}
	}
	var p uintptr
	t.Run("faults", func(t *testing.T) {
		onCard(t)
		ctl.SetFaults(t, "fail_malloc=1")
		if r := c.Malloc(&p, 64, 0); code(r) != errMemNoMemory {
			t.Fatalf("malloc with fail_malloc=1: %#x, want %#x", code(r), errMemNoMemory)
		}
		if msg := ctl.LastError(); !strings.HasPrefix(msg, "0x80300507") {
			t.Fatalf("LastError() = %q, want the malloc's 0x80300507", msg)
		}
	})
	c.ok("malloc after the subtest cleared the plan", c.Malloc(&p, 64, 0))
	c.ok("free", c.Free(p))

	t.Run("config", func(t *testing.T) {
		onCard(t)
		ctl.Config(t, "cmm_mib=1", "cmm_mib=7040")
		if r := c.Malloc(&p, 2<<20, 0); code(r) != errMemNoMemory {
			t.Fatalf("2 MiB malloc in 1 MiB of CMM: %#x, want %#x", code(r), errMemNoMemory)
		}
	})
	c.ok("2 MiB malloc after the subtest undid cmm_mib", c.Malloc(&p, 2<<20, 0))
	c.ok("free", c.Free(p))
}

// TestLibraryHelper is not a test: it runs in a child process started by TestRequireSim, with
// no C compiler on PATH and an empty temp folder (no cached build).
func TestLibraryHelper(t *testing.T) {
	if os.Getenv("KILNSIM_LIBRARY_HELPER") != "1" {
		t.Skip("helper process only")
	}
	Library(t)
}

// Without a C compiler Library skips, unless KILN_REQUIRE_SIM is set: then the test fails, so
// a CI machine that cannot build the simulator does not pass as a run of skips.
func TestRequireSim(t *testing.T) {
	child := func(env ...string) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLibraryHelper$", "-test.v")
		for _, kv := range os.Environ() {
			switch strings.SplitN(kv, "=", 2)[0] {
			case "PATH", "CC", "TMPDIR", EnvRequireSim:
			default:
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, append(env, "KILNSIM_LIBRARY_HELPER=1", "PATH="+t.TempDir(), "TMPDIR="+t.TempDir())...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := child()
	if err != nil || !strings.Contains(out, "--- SKIP: TestLibraryHelper") || !strings.Contains(out, "no C compiler") {
		t.Fatalf("without a compiler and without %s: %v, want a skip:\n%s", EnvRequireSim, err, out)
	}
	out, err = child(EnvRequireSim + "=1")
	if err == nil || !strings.Contains(out, "--- FAIL: TestLibraryHelper") || !strings.Contains(out, "no C compiler") {
		t.Fatalf("without a compiler and with %s=1: %v, want a failure:\n%s", EnvRequireSim, err, out)
	}
}
