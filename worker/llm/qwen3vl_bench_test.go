package llm

import (
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// BenchmarkQwen3VLImageHost is the host's share of one Qwen3-VL-2B image (384×384, 144
// rows of hidden 2048, 3 deepstack features, fp32 encoder outputs): cutting the patches
// (884,736 bytes), turning the embeddings into bf16 rows and the deepstack features into
// float32, the mRoPE positions of a 170-token prompt, and the three deepstack additions
// to 144 bf16 rows. The card's encoder time for the same image is 157 ms (Qwen3-VL.AXERA
// TIME-2B.md).
func BenchmarkQwen3VLImageHost(b *testing.B) {
	const hidden, tokens, deepstack = 2048, 144, 3
	l := PatchLayout{Patch: 16, Temporal: 2, Merge: 2}
	img := make([]byte, 384*384*3)
	for i := range img {
		img[i] = byte(rand.IntN(256))
	}
	patches := make([]byte, len(img)*l.Temporal)
	raw := make([]byte, tokens*hidden*4)
	for i := range raw {
		raw[i] = byte(rand.IntN(64))
	}
	rows := make([]byte, tokens*hidden*2)
	deep := make([]byte, deepstack*tokens*hidden*4)
	prompt := make([]int, 170)
	for i := 13; i < 13+tokens; i++ {
		prompt[i] = 151655
	}
	var pos [3][]uint32
	for r := range pos {
		pos[r] = make([]uint32, len(prompt))
	}
	hid := make([]byte, tokens*hidden*2)
	b.SetBytes(int64(len(img)))
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		if err := l.Patchify(patches, img, 384, 384); err != nil {
			b.Fatal(err)
		}
		toBF16(rows, raw, true)
		for k := range deepstack {
			toFP32(deep[k*tokens*hidden*4:(k+1)*tokens*hidden*4], raw, true)
		}
		mropePositions(&pos, prompt, []int{13}, 12, 12)
		for k := range deepstack {
			addBF16(hid, deep[k*tokens*hidden*4:(k+1)*tokens*hidden*4])
		}
	}
	// The machine is shared: CPU time per image says what the work costs when wall time
	// also counts waiting for a core.
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
