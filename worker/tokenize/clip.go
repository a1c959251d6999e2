package tokenize

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// CLIPContext is the sequence length of the CLIP text encoder of Stable
// Diffusion 1.5: bos, at most 75 tokens, eos, then padding.
const CLIPContext = 77

const (
	clipBOS   = "<|startoftext|>"
	clipEOS   = "<|endoftext|>"
	eowSuffix = "</w>"
)

// CLIP is the BPE tokenizer of OpenAI CLIP (openai/clip-vit-large-patch14,
// the SD 1.5 text encoder), read from vocab.json and merges.txt. Its ids are
// those of the Hugging Face fast CLIPTokenizer. It is safe for concurrent
// use.
type CLIP struct {
	vocab     map[string]int32
	pieces    []string // id -> bytes, with a trailing space for "</w>" tokens
	merges    mergeTable
	byteID    [256]int32 // one-byte token inside a word
	byteEndID [256]int32 // one-byte token ending a word ("x</w>")
	bos, eos  int32
	unk       int32
	added     addedMatcher
}

// LoadCLIP reads vocab.json and merges.txt (each plain or .gz) from dir, or
// from its one subfolder named like "tokenizer" that has them (the
// tokenizer/ of a diffusers Stable Diffusion folder). It returns an error
// wrapping ErrNotFound if either file is missing.
func LoadCLIP(dir string) (*CLIP, error) {
	dir, err := findTokenizerDir(dir, "vocab.json")
	if err != nil {
		return nil, err
	}
	vp, ok := findFile(dir, "vocab.json")
	if !ok {
		return nil, fmt.Errorf("%w: no vocab.json in %s", ErrNotFound, dir)
	}
	mp, ok := findFile(dir, "merges.txt")
	if !ok {
		return nil, fmt.Errorf("%w: no merges.txt in %s", ErrNotFound, dir)
	}
	vocab, err := readFile(vp)
	if err != nil {
		return nil, err
	}
	merges, err := readFile(mp)
	if err != nil {
		return nil, err
	}
	c, err := ParseCLIP(vocab, merges)
	if err != nil {
		return nil, fmt.Errorf("%w (files %s, %s)", err, vp, mp)
	}
	return c, nil
}

// ParseCLIP builds a CLIP tokenizer from the bytes of vocab.json and
// merges.txt.
func ParseCLIP(vocabJSON, mergesTxt []byte) (*CLIP, error) {
	c := &CLIP{}
	var vb vocabBuilder
	sc := jsonScanner{b: vocabJSON}
	if err := sc.objectStringInt(vb.add); err != nil {
		return nil, formatErr("vocab.json: %v", err)
	}
	if sc.ws(); sc.i != len(vocabJSON) {
		return nil, formatErr("vocab.json: data after the object at offset %d", sc.i)
	}
	var maxID int32
	var err error
	if c.vocab, maxID, err = vb.build(); err != nil {
		return nil, formatErr("vocab.json: %v", err)
	}
	if int(maxID) >= 2*len(vb.ents)+1024 {
		return nil, formatErr("vocab.json: token id %d is implausibly large for %d tokens", maxID, len(vb.ents))
	}
	c.pieces = make([]string, maxID+1)
	seen := make([]bool, maxID+1)
	for tok, id := range c.vocab {
		if seen[id] {
			return nil, formatErr("vocab.json: id %d is used twice", id)
		}
		seen[id] = true
		switch tok {
		case clipBOS, clipEOS:
			c.pieces[id] = tok
			continue
		}
		body, eow := strings.CutSuffix(tok, eowSuffix)
		raw, ok := byteLevelDecode(body)
		if !ok {
			return nil, formatErr("vocab.json: token %q is not in the byte-level alphabet", tok)
		}
		if eow {
			raw = append(raw, ' ')
		}
		c.pieces[id] = string(raw)
	}
	var ok bool
	if c.bos, ok = c.vocab[clipBOS]; !ok {
		return nil, formatErr("vocab.json has no %s", clipBOS)
	}
	if c.eos, ok = c.vocab[clipEOS]; !ok {
		return nil, formatErr("vocab.json has no %s", clipEOS)
	}
	c.unk = c.eos
	for i := range 256 {
		ch := string(byteToRune[i])
		if c.byteID[i], ok = c.vocab[ch]; !ok {
			return nil, formatErr("vocab.json has no token for byte %#02x (%q)", i, ch)
		}
		if c.byteEndID[i], ok = c.vocab[ch+eowSuffix]; !ok {
			return nil, formatErr("vocab.json has no token for byte %#02x (%q)", i, ch+eowSuffix)
		}
	}

	var ml mergeList
	sr := bufio.NewScanner(bytes.NewReader(mergesTxt))
	sr.Buffer(make([]byte, 0, 4096), 1<<20)
	for line := 0; sr.Scan(); line++ {
		l := bytes.TrimRight(sr.Bytes(), "\r")
		if line == 0 && bytes.HasPrefix(l, []byte("#version")) || len(l) == 0 {
			continue
		}
		a, b, ok := bytes.Cut(l, []byte{' '})
		if !ok || bytes.IndexByte(b, ' ') >= 0 {
			return nil, formatErr("merges.txt line %d %q is not two tokens separated by one space", line+1, l)
		}
		if err := ml.add(a, b); err != nil {
			return nil, formatErr("merges.txt: %v", err)
		}
	}
	if err := sr.Err(); err != nil {
		return nil, formatErr("merges.txt: %v", err)
	}
	if len(ml.ents) == 0 {
		return nil, formatErr("merges.txt has no merges")
	}
	if c.merges, err = ml.resolve(c.vocab, &vb, maxID); err != nil {
		return nil, formatErr("merges.txt: %v", err)
	}
	c.added = newAddedMatcher([]addedToken{{content: clipBOS, id: c.bos}, {content: clipEOS, id: c.eos}})
	return c, nil
}

// normalizeCLIP applies the CLIP normalizer: NFC, then lower case char by
// char (Rust's char::to_lowercase, so final sigma is not special and İ
// becomes i̇). The normalizer's "whitespace runs to one space" step is left
// out: the pre-tokenizer drops all whitespace, so it never changes the ids.
func normalizeCLIP(text string) string {
	if !isNFC(text) {
		text = norm.NFC.String(text)
	}
	lower := true
	for i := 0; i < len(text); i++ {
		if c := text[i]; c >= utf8.RuneSelf || ('A' <= c && c <= 'Z') {
			lower = false
			break
		}
	}
	if lower {
		return text
	}
	var sb strings.Builder
	sb.Grow(len(text))
	for _, r := range text {
		if r == 'İ' {
			sb.WriteString("i\u0307")
			continue
		}
		sb.WriteRune(unicode.ToLower(r))
	}
	return sb.String()
}

// clipNext finds the next pre-token of s at or after i (the regex
// 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ on lower-case
// text; whitespace between matches is dropped). start is len(s) at the end.
func clipNext(s string, i int) (start, end int) {
	for i < len(s) {
		cl, r, w := classAt(s, i)
		switch {
		case cl == clSpace:
			i += w
			continue
		case r == '\'' && contraction(s, i, false) > 0:
			return i, i + contraction(s, i, false)
		case cl == clNumber:
			return i, i + w
		}
		return i, runEnd(s, i+w, cl)
	}
	return len(s), len(s)
}

// Encode returns the ids of text with <|startoftext|> first and
// <|endoftext|> last, neither truncated nor padded.
func (c *CLIP) Encode(text string) []int {
	return c.EncodeAppend(make([]int, 0, len(text)/3+4), text)
}

// EncodeAppend appends the ids of Encode(text) to dst.
func (c *CLIP) EncodeAppend(dst []int, text string) []int {
	text = normalizeCLIP(text)
	sc := scratchPool.Get().(*scratch)
	dst = append(dst, int(c.bos))
	for i := 0; i < len(text); {
		start, end, id := c.added.next(text, i)
		seg := text[i:start]
		for j := 0; j < len(seg); {
			s, e := clipNext(seg, j)
			if s < e {
				dst = c.encodeWord(dst, seg[s:e], sc)
			}
			j = e
		}
		if id >= 0 {
			dst = append(dst, int(id))
		}
		i = end
	}
	scratchPool.Put(sc)
	return append(dst, int(c.eos))
}

func (c *CLIP) encodeWord(dst []int, w string, sc *scratch) []int {
	syms := sc.syms[:0]
	for i := 0; i < len(w)-1; i++ {
		syms = append(syms, c.byteID[w[i]])
	}
	syms = append(syms, c.byteEndID[w[len(w)-1]])
	syms = c.merges.merge(syms, sc)
	for _, id := range syms {
		dst = append(dst, int(id))
	}
	sc.syms = syms[:0]
	return dst
}

// Encode77 returns the text encoder input for text: Encode(text) cut to bos,
// the first 75 tokens and eos if it is longer, then padded with
// <|endoftext|> to 77 (Hugging Face padding="max_length", truncation=True).
func (c *CLIP) Encode77(text string) [CLIPContext]int32 {
	return c.Pad77(c.Encode(text))
}

// Pad77 truncates and pads ids from Encode as Encode77 does.
func (c *CLIP) Pad77(ids []int) [CLIPContext]int32 {
	var out [CLIPContext]int32
	n := min(len(ids), CLIPContext)
	for i := range n {
		out[i] = int32(ids[i])
	}
	if len(ids) > CLIPContext {
		out[CLIPContext-1] = c.eos
	}
	for i := n; i < CLIPContext; i++ {
		out[i] = c.eos
	}
	return out
}

// Decode returns the text of ids: <|startoftext|> and <|endoftext|> are
// dropped, a word end becomes a space, and the final space is trimmed. The
// normalization (lower case, whitespace) is not undone.
func (c *CLIP) Decode(ids []int) string {
	var buf []byte
	for _, id := range ids {
		if id < 0 || id >= len(c.pieces) || id == int(c.bos) || id == int(c.eos) {
			continue
		}
		buf = append(buf, c.pieces[id]...)
	}
	buf = bytes.TrimSuffix(buf, []byte{' '})
	return string(appendLossy(nil, buf))
}

// TokenID returns the id of a vocabulary entry ("cat</w>", "<|endoftext|>").
func (c *CLIP) TokenID(tok string) (int, bool) {
	id, ok := c.vocab[tok]
	return int(id), ok
}

// VocabSize is the number of ids (49,408 for SD 1.5).
func (c *CLIP) VocabSize() int { return len(c.pieces) }

// BOS returns the id of <|startoftext|>.
func (c *CLIP) BOS() int { return int(c.bos) }

// EOS returns the id of <|endoftext|>, which is also the padding id.
func (c *CLIP) EOS() int { return int(c.eos) }
