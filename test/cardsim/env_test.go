package cardsim

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEnvHelper is not a test: it runs in a child process started by TestEnvironment, whose
// environment the simulator reads at axclInit, and prints what it saw.
func TestEnvHelper(t *testing.T) {
	if os.Getenv("KILNSIM_ENV_HELPER") != "1" {
		t.Skip("helper process only")
	}
	s := loadSim(t)
	r := s.Init(nil)
	fmt.Printf("init=%#x\n", code(r))
	if r != 0 {
		return
	}
	var l deviceList
	s.GetDeviceList(&l)
	fmt.Printf("devices=%v\n", l.Devices[:l.Num])
	var p [240]byte
	s.GetDeviceProperties(l.Devices[0], &p)
	fmt.Printf("temp=%d\n", int32(uint32(p[84])|uint32(p[85])<<8|uint32(p[86])<<16|uint32(p[87])<<24))
	s.Finalize()
}

func TestEnvironment(t *testing.T) {
	loadSim(t) // builds the library before the child needs it, or skips
	tf := filepath.Join(t.TempDir(), "temp")
	os.WriteFile(tf, []byte("66"), 0o644)
	child := func(env ...string) string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestEnvHelper$", "-test.v")
		cmd.Env = append(os.Environ(), append(env, "KILNSIM_ENV_HELPER=1")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return string(out)
	}
	out := child("KILN_SIM_DEVICES=3,1", "KILN_SIM_TEMP_FILE="+tf)
	if !strings.Contains(out, "devices=[1 3]") || !strings.Contains(out, "temp=66000") {
		t.Fatalf("KILN_SIM_DEVICES / KILN_SIM_TEMP_FILE not honoured:\n%s", out)
	}
	out = child("KILN_SIM_AMBIENT_C=25")
	if !strings.Contains(out, "devices=[1]") || !strings.Contains(out, "temp=25000") {
		t.Fatalf("defaults / KILN_SIM_AMBIENT_C not honoured:\n%s", out)
	}
	out = child("KILN_SIM_FAULTS=explode=1")
	if !strings.Contains(out, fmt.Sprintf("init=%#x", errConfigIllegal)) {
		t.Fatalf("a bad KILN_SIM_FAULTS did not fail axclInit:\n%s", out)
	}
}
