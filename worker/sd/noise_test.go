package sd

import (
	"math"
	"slices"
	"testing"
)

func TestMT19937(t *testing.T) {
	// The reference sequence of std::mt19937 seeded with its default, 5489.
	var g noiseSource
	g.seed(5489)
	for i, want := range []uint32{3499211612, 581869302, 3890346734, 3586334585, 545404204} {
		if got := g.next(); got != want {
			t.Fatalf("output %d = %d, want %d", i, got, want)
		}
	}
	for i := 5; i < 9999; i++ {
		g.next()
	}
	if got := g.next(); got != 4123659995 { // the 10000th output, from the C++ standard
		t.Fatalf("10000th output = %d, want 4123659995", got)
	}
}

func TestRandn(t *testing.T) {
	var g noiseSource
	g.seed(42)
	a := make([]float32, 4*64*64)
	g.randn(a)
	var sum, sq float64
	for _, v := range a {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("non-finite sample %v", v)
		}
		sum += float64(v)
		sq += float64(v) * float64(v)
	}
	n := float64(len(a))
	mean, std := sum/n, math.Sqrt(sq/n-(sum/n)*(sum/n))
	if math.Abs(mean) > 0.05 || math.Abs(std-1) > 0.05 {
		t.Fatalf("mean %v std %v of %d samples", mean, std, len(a))
	}
	b := make([]float32, len(a))
	g.seed(42)
	g.randn(b)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave other noise")
	}
	g.seed(43)
	g.randn(b)
	if slices.Equal(a, b) {
		t.Fatal("another seed gave the same noise")
	}
	// Only the low 32 bits of the seed count (torch's mt19937).
	g.seed(42 | 1<<40)
	g.randn(b)
	if !slices.Equal(a, b) {
		t.Fatal("the high bits of the seed changed the noise")
	}
	// A size that is not a multiple of 16 redraws its last 16 values.
	c := make([]float32, 20)
	g.seed(7)
	g.randn(c)
	d := make([]float32, 16)
	g.seed(7)
	g.randn(d)
	if !slices.Equal(c[:4], d[:4]) || slices.Equal(c[4:], d) {
		t.Fatalf("tail handling: %v vs %v", c, d)
	}
}
