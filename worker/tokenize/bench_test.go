package tokenize

import (
	"os"
	"testing"
)

func benchText(b *testing.B) string {
	data, err := os.ReadFile("testdata/bench_text.txt")
	if err != nil {
		b.Fatal(err)
	}
	return string(data)
}

// BenchmarkQwen3Encode encodes testdata/bench_text.txt, prose and code of
// about 2,000 tokens.
func BenchmarkQwen3Encode(b *testing.B) {
	tok := qwen3(b)
	text := benchText(b)
	ids := tok.Encode(text)
	b.ReportMetric(float64(len(ids)), "tokens")
	b.SetBytes(int64(len(text)))
	dst := make([]int, 0, len(ids))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		dst = tok.EncodeAppend(dst[:0], text)
	}
}

func BenchmarkQwen3LoadGzip(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load("testdata/qwen3/tokenizer.json.gz"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQwen3LoadJSON parses the uncompressed tokenizer.json from memory
// (the gzip inflate excluded; file reading costs little next to it).
func BenchmarkQwen3LoadJSON(b *testing.B) {
	data, err := readFile("testdata/qwen3/tokenizer.json.gz")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQwen3DecodeOne(b *testing.B) {
	tok := qwen3(b)
	id, _ := tok.TokenID("Ġtokenizer")
	ids := []int{id}
	b.ReportAllocs()
	for b.Loop() {
		_ = tok.Decode(ids)
	}
}

// BenchmarkDetokenizerAdd streams the ids of the bench text through a
// Detokenizer; ns/op is per token.
func BenchmarkDetokenizerAdd(b *testing.B) {
	tok := qwen3(b)
	ids := tok.Encode(benchText(b))
	d := tok.NewDetokenizer()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = d.Add(ids[i])
		if i++; i == len(ids) {
			i = 0
			d.Flush()
		}
	}
}

func BenchmarkCLIPEncode77(b *testing.B) {
	tok := clip(b)
	const prompt = "masterpiece, best quality, a photo of an astronaut riding a horse on mars, highly detailed, 8k"
	b.ReportAllocs()
	for b.Loop() {
		_ = tok.Encode77(prompt)
	}
}

func BenchmarkCLIPLoad(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := LoadCLIP("testdata/clip"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQwen3EncodeCold is BenchmarkQwen3Encode with the per-token
// "merges back to itself" flags cleared before every run, as in the first
// encode after loading.
func BenchmarkQwen3EncodeCold(b *testing.B) {
	tok := qwen3(b)
	text := benchText(b)
	dst := make([]int, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range tok.whole {
			tok.whole[i].Store(0)
		}
		b.StartTimer()
		dst = tok.EncodeAppend(dst[:0], text)
	}
}
