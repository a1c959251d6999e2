package cardsim

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"
	"unsafe"
)

func writeFile(p string, b []byte) error { return os.WriteFile(p, b, 0o644) }

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func statSize(p string) (int64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// allSpecs returns one spec of every kind the generators write.
func allSpecs() []*ModelSpec {
	s := TinyQwen3()
	s.Vision = &VisionSpec{File: "v.axmodel", Width: 32, Height: 32, Grid: 2}
	sd := SD15LCM()
	out := []*ModelSpec{s.LayerSpec(0), s.PostSpec(), s.VisionModelSpec()}
	for _, m := range sd.ModelSpecs() {
		out = append(out, m)
	}
	big := Qwen3_4B()
	return append(out, big.LayerSpec(3))
}

func TestSpecRoundTrip(t *testing.T) {
	for _, s := range allSpecs() {
		b, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseModelSpec(b)
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Fatalf("%s: round trip differs:\n%+v\n%+v", s.Name, got, s)
		}
	}
	if _, err := ParseModelSpec([]byte("\x00\x01AXMODEL")); !errors.Is(err, ErrNotSim) {
		t.Fatalf("real model: %v, want ErrNotSim", err)
	}
}

// TestCParserAcceptsGenerated checks that the C side validates every generated spec and
// rejects broken ones with ILLEGAL_PARAM.
func TestCParserAcceptsGenerated(t *testing.T) {
	s := loadSim(t)
	for _, m := range allSpecs() {
		b, _ := m.Marshal()
		if r, msg := cParse(s, b); r != 0 {
			t.Fatalf("%s: %#x %s", m.Name, code(r), msg)
		}
	}
	tq := TinyQwen3()
	bad := tq.LayerSpec(0)
	bad.Inputs[2].Dims[0] = []int{1, 1, 7} // decode mask shorter than the K_cache
	bad.Inputs[3].Dims[0] = []int{1, 9, 32}
	b, _ := bad.Marshal()
	if r, _ := cParse(s, b); code(r) != errEngineIllegal {
		t.Fatalf("inconsistent layer accepted: %#x", code(r))
	}
}

func cParse(s *sim, b []byte) (int32, string) {
	msg := make([]byte, 256)
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	r := s.parseSpec(p, uint64(len(b)), unsafe.Pointer(&msg[0]), uint64(len(msg)))
	if i := bytes.IndexByte(msg, 0); i >= 0 {
		msg = msg[:i]
	}
	return r, string(msg)
}

func specSeeds(f *testing.F) {
	for _, s := range allSpecs() {
		b, _ := s.Marshal()
		f.Add(b)
	}
	f.Add([]byte(Magic))
	f.Add([]byte(Magic + "kind llm_post\ngroups 1\ninput input bf16 1x1x4\noutput output bf16 1x1x9\nend\n"))
	f.Add([]byte(Magic + "# comment\n\nkind vision\ngroups 2\nparam grid 2\nparam hidden 3\ninput input uint8 1x4x4x3 1x8x8x3\noutput output fp32 1x4x3 1x4x3\nend\ntrailing"))
	f.Add([]byte("garbage"))
}

// FuzzParseModelSpec: the Go decoder never panics, and what it accepts re-encodes to an
// equivalent spec.
func FuzzParseModelSpec(f *testing.F) {
	specSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseModelSpec(data)
		if err != nil {
			return
		}
		b, err := s.Marshal()
		if err != nil {
			return // e.g. a name the encoder refuses; decoding was still safe
		}
		s2, err := ParseModelSpec(b)
		if err != nil {
			t.Fatalf("re-encoded spec does not parse: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(s, s2) {
			t.Fatalf("round trip differs:\n%+v\n%+v", s, s2)
		}
	})
}

// FuzzCParseSpec: the simulator's C parser and validator (what LoadFromFile/LoadFromMem run on
// outside bytes) never crash, and accept only specs the Go decoder also reads.
func FuzzCParseSpec(f *testing.F) {
	specSeeds(f)
	s := loadSim(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, _ := cParse(s, data)
		if r != 0 {
			if code(r) != errEngineIllegal {
				t.Fatalf("rejection code %#x, want %#x", code(r), errEngineIllegal)
			}
			return
		}
		if !bytes.HasPrefix(data, []byte(Magic)) {
			t.Fatal("C parser accepted data without the magic")
		}
	})
}
