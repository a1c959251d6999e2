package tokenize

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// seedTexts adds the texts of the shared cases to a fuzz corpus.
func seedTexts(f *testing.F, path string) {
	for _, c := range readCases(f, path) {
		f.Add(c.Text)
	}
	f.Add("\xff\xfe invalid \xe4\xb8")
	f.Add("<|im_end|>\u0338 a<\u0338")
}

// expectedRoundTrip is what decoding the encoding of valid UTF-8 text gives:
// the added tokens as written and NFC of the text between them (the
// normalizer never sees the added tokens, so a combining mark after
// "<|im_end|>" stays apart). The added tokens are searched for here
// independently of addedMatcher, leftmost first, then longest.
func expectedRoundTrip(tok *BPE, s string) string {
	var added []string
	for _, id := range tok.AddedTokens() {
		added = append(added, tok.pieces[id])
	}
	var sb strings.Builder
	for s != "" {
		at, best := -1, ""
		for _, a := range added {
			if k := strings.Index(s, a); k >= 0 && (at < 0 || k < at || (k == at && len(a) > len(best))) {
				at, best = k, a
			}
		}
		if at < 0 {
			sb.WriteString(norm.NFC.String(s))
			break
		}
		sb.WriteString(norm.NFC.String(s[:at]))
		sb.WriteString(best)
		s = s[at+len(best):]
	}
	return sb.String()
}

func FuzzQwen3Encode(f *testing.F) {
	seedTexts(f, "testdata/qwen3/cases.json")
	f.Fuzz(func(t *testing.T, s string) {
		tok := qwen3(t)
		ids := tok.Encode(s)
		for _, id := range ids {
			if id < 0 || id >= tok.VocabSize() {
				t.Fatalf("id %d out of range", id)
			}
		}
		if !utf8.ValidString(s) {
			_ = tok.Decode(ids)
			return
		}
		if got, want := tok.Decode(ids), expectedRoundTrip(tok, s); got != want {
			t.Fatalf("decode(encode(%q)) = %q, want %q", s, got, want)
		}
		if !strings.Contains(s, "<") {
			if got := tok.Decode(ids); got != norm.NFC.String(s) {
				t.Fatalf("decode(encode(%q)) = %q, want NFC %q", s, got, norm.NFC.String(s))
			}
		}
	})
}

func FuzzCLIPEncode(f *testing.F) {
	seedTexts(f, "testdata/clip/cases.json")
	f.Fuzz(func(t *testing.T, s string) {
		tok := clip(t)
		ids := tok.Encode(s)
		if len(ids) < 2 || ids[0] != tok.BOS() || ids[len(ids)-1] != tok.EOS() {
			t.Fatalf("ids %v lack bos/eos", ids)
		}
		for _, id := range ids {
			if id < 0 || id >= tok.VocabSize() {
				t.Fatalf("id %d out of range", id)
			}
		}
		ids77 := tok.Encode77(s)
		if ids77[0] != int32(tok.BOS()) || ids77[CLIPContext-1] != int32(tok.EOS()) {
			t.Fatalf("ids77 %v", ids77)
		}
		n := min(len(ids), CLIPContext-1)
		for i := 0; i < n; i++ {
			if ids77[i] != int32(ids[i]) {
				t.Fatalf("ids77 differs from ids at %d", i)
			}
		}
		if !utf8.ValidString(s) || strings.Contains(strings.ToLower(s), "<|") {
			return
		}
		// Decoding gives the normalized text back, up to white space.
		noSpace := func(s string) string {
			return strings.Map(func(r rune) rune {
				if unicode.IsSpace(r) {
					return -1
				}
				return r
			}, s)
		}
		if got, want := noSpace(tok.Decode(ids)), noSpace(normalizeCLIP(s)); got != want {
			t.Fatalf("decode(encode(%q)) = %q, want %q", s, got, want)
		}
	})
}

// FuzzDetokenizer streams ids (3 bytes each, taken from the input) and checks
// that every piece is whole UTF-8 and that the pieces add up to Decode.
func FuzzDetokenizer(f *testing.F) {
	tok := qwen3(f)
	for _, c := range readCases(f, "testdata/qwen3/cases.json") {
		var b []byte
		for _, id := range c.IDs {
			b = append(b, byte(id>>16), byte(id>>8), byte(id))
		}
		f.Add(b)
	}
	// Lone lead and continuation bytes.
	for _, c := range []byte{0xe4, 0xf0, 0x9f, 0xbf, 0xc3, 0xed} {
		id, _ := tok.TokenID(string(byteToRune[c]))
		f.Add([]byte{byte(id >> 16), byte(id >> 8), byte(id)})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ids []int
		for i := 0; i+3 <= len(data); i += 3 {
			ids = append(ids, (int(data[i])<<16|int(data[i+1])<<8|int(data[i+2]))%(tok.VocabSize()+10))
		}
		d := tok.NewDetokenizer()
		var sb strings.Builder
		for _, id := range ids {
			piece := d.Add(id)
			if !utf8.ValidString(piece) {
				t.Fatalf("piece %q is not valid UTF-8", piece)
			}
			if d.Pending() > 3 {
				t.Fatalf("%d bytes pending", d.Pending())
			}
			sb.WriteString(piece)
		}
		sb.WriteString(d.Flush())
		if got, want := sb.String(), tok.Decode(ids); got != want {
			t.Fatalf("stream %q != decode %q (ids %v)", got, want, ids)
		}
		if d.Pending() != 0 || d.Flush() != "" {
			t.Fatal("flush left bytes behind")
		}
	})
}

// FuzzLoad feeds malformed tokenizer.json files to Parse: an error, never a
// panic, and a tokenizer that loads must encode and decode.
func FuzzLoad(f *testing.F) {
	valid := tinyTokenizer(qwenPreTokenizer)
	f.Add(valid)
	f.Add(tinyTokenizer(`{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`))
	f.Add(tinyTokenizer(`{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"Split","pattern":{"Regex":"\\s+|\\w+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","use_regex":false}]}`))
	f.Add(valid[:len(valid)/2])
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}}`))
	f.Add([]byte(`{"model":null}`))
	f.Add([]byte(`{"model":{"vocab":{"\u00e9":1},"merges":["a b"]}}`))
	f.Add([]byte(`[[[[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := Parse(data)
		if err != nil {
			if tok != nil {
				t.Fatal("tokenizer and error")
			}
			if !strings.HasPrefix(err.Error(), "tokenize: ") {
				t.Fatalf("error without package prefix: %v", err)
			}
			return
		}
		for _, s := range []string{"hello the<|end|> the", "a\u0301 12 \xff"} {
			ids := tok.Encode(s)
			_ = tok.Decode(ids)
			d := tok.NewDetokenizer()
			for _, id := range ids {
				d.Add(id)
			}
			d.Flush()
		}
		_ = tok.Decode([]int{-1, 0, 1 << 30})
	})
}

// FuzzCLIPLoad feeds malformed vocab.json and merges.txt to ParseCLIP.
func FuzzCLIPLoad(f *testing.F) {
	var vocab strings.Builder
	vocab.WriteString("{")
	for b := range 256 {
		vocab.WriteString(mustJSON(string(byteToRune[b])) + ":" + itoa(b) + ",")
		vocab.WriteString(mustJSON(string(byteToRune[b])+"</w>") + ":" + itoa(256+b) + ",")
	}
	vocab.WriteString(`"ca": 512, "cat</w>": 513, "<|startoftext|>": 514, "<|endoftext|>": 515}`)
	f.Add([]byte(vocab.String()), []byte("#version: 0.2\nc a\nca t</w>\n"))
	f.Add([]byte(`{"a":1}`), []byte("a b"))
	f.Fuzz(func(t *testing.T, v, m []byte) {
		c, err := ParseCLIP(v, m)
		if err != nil {
			return
		}
		ids := c.Encode("A cat, a CAT!")
		_ = c.Decode(ids)
		_ = c.Pad77(ids)
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

// FuzzQwenPretokenizer checks the hand-written matcher of the Qwen regex
// against the regex itself run by regexp2.
func FuzzQwenPretokenizer(f *testing.F) {
	seedTexts(f, "testdata/qwen3/cases.json")
	re, err := regexStep(qwenPattern, true)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		var want, got []string
		re.each(s, func(p string) { want = append(want, p) })
		(&splitStep{next: qwenNext}).each(s, func(p string) { got = append(got, p) })
		if !slices.Equal(got, want) {
			t.Fatalf("%q:\n got %q\nwant %q", s, got, want)
		}
	})
}

// gpt2Pattern is the regex the ByteLevel pre-tokenizer uses with use_regex.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// FuzzGPT2Pretokenizer checks gpt2Next against the GPT-2 regex run by
// regexp2.
func FuzzGPT2Pretokenizer(f *testing.F) {
	seedTexts(f, "testdata/qwen3/cases.json")
	re, err := regexStep(gpt2Pattern, true)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		var want, got []string
		re.each(s, func(p string) { want = append(want, p) })
		(&splitStep{next: gpt2Next}).each(s, func(p string) { got = append(got, p) })
		if !slices.Equal(got, want) {
			t.Fatalf("%q:\n got %q\nwant %q", s, got, want)
		}
	})
}
