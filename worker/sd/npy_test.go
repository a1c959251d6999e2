package sd

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

func TestReadNPY(t *testing.T) {
	dir := t.TempDir()
	spec := cardsim.SD15LCM()
	if err := cardsim.WriteSDPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, TxtTimeFile))
	if err != nil {
		t.Fatal(err)
	}
	shape, v, err := ReadNPY(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(shape, []int{4, 1280}) {
		t.Fatalf("shape %v", shape)
	}
	for i, ts := range Timesteps {
		if !slices.Equal(v[i*1280:(i+1)*1280], spec.TimeEmbedding(ts)) {
			t.Fatalf("row %d differs from the time embedding of t=%d", i, ts)
		}
	}
	// A 1-D file and a version 2.0 header.
	p := filepath.Join(dir, "one.npy")
	if err := cardsim.WriteNPY(p, []int{3}, []float32{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	one, _ := os.ReadFile(p)
	if shape, v, err := ReadNPY(one); err != nil || !slices.Equal(shape, []int{3}) || !slices.Equal(v, []float32{1, 2, 3}) {
		t.Fatalf("1-D: %v %v %v", shape, v, err)
	}
	hdr := one[10:]
	v2 := append([]byte("\x93NUMPY\x02\x00"), byte(len(hdr)-12), 0, 0, 0)
	v2 = append(v2, one[10:]...)
	if shape, _, err := ReadNPY(v2); err != nil || !slices.Equal(shape, []int{3}) {
		t.Fatalf("v2: %v %v", shape, err)
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"magic":     []byte("NUMPY\x01\x00\x10\x00{}"),
		"truncated": b[:len(b)-1],
		"long":      append(slices.Clone(b), 0, 0, 0, 0),
		"float64":   replace(b, "<f4", "<f8"),
		"fortran":   replace(b, "False", "True "),
		"big":       replace(b, "(4, 1280)", "(9999999999)"),
		"version":   replace(b, "\x93NUMPY\x01", "\x93NUMPY\x09"),
	} {
		if _, _, err := ReadNPY(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func replace(b []byte, old, new string) []byte {
	out := b
	for j := 0; j+len(old) <= len(out); j++ {
		if string(out[j:j+len(old)]) == old {
			return append(append(append([]byte{}, out[:j]...), new...), out[j+len(old):]...)
		}
	}
	return out
}

func FuzzReadNPY(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "a.npy")
	if err := cardsim.WriteNPY(p, []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	f.Add(b)
	f.Add(b[:20])
	f.Add([]byte("\x93NUMPY\x02\x00\xff\xff\xff\xff"))
	f.Add(replace(b, "(2, 3)", "(2, 3, )"))
	f.Fuzz(func(t *testing.T, b []byte) {
		shape, v, err := ReadNPY(b)
		if err != nil {
			return
		}
		n := 1
		for _, d := range shape {
			n *= d
		}
		if n != len(v) {
			t.Fatalf("shape %v but %d values", shape, len(v))
		}
	})
}
