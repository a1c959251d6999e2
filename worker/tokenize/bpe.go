package tokenize

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/text/unicode/norm"
)

// BPE is a byte-level BPE tokenizer loaded from a Hugging Face
// tokenizer.json (the Qwen2/Qwen3 family and GPT-2 style files). It is safe
// for concurrent use.
type BPE struct {
	vocab   map[string]int32 // model vocabulary and added tokens
	pieces  []string         // id -> the bytes the token stands for
	special []bool           // id -> added token marked special
	merges  mergeTable
	byteID  [256]int32 // id of the one-byte token, -1 if absent
	unkID   int32      // -1: unknown symbols are dropped
	ignoreM bool       // ignore_merges: whole words found in vocab win
	// A word that is one vocabulary token skips the merge loop when
	// whole[id] says that merging the token's own bytes gives back the
	// token (0 not known yet, 1 yes, 2 no), which keeps the shortcut exact.
	whole    []atomic.Uint32
	nfc      bool
	steps    []splitStep
	raw      addedMatcher // added tokens matched in the raw text
	norm     addedMatcher // added tokens matched after normalization
	specials SpecialTokens
	template string // chat_template from tokenizer_config.json, if read
}

// SpecialTokens are the ids of the tokens a model treats specially. An id is
// -1 when the tokenizer files do not name one.
type SpecialTokens struct {
	BOS int // beginning of sequence
	EOS int // end of sequence: generation stops here (Qwen3: <|im_end|>)
	PAD int // padding
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Load reads a tokenizer.json, plain or gzip-compressed (path may name
// either; "tokenizer.json" also finds "tokenizer.json.gz"). A file that is
// malformed or uses a component this package does not implement gives an
// error wrapping ErrFormat that says which part is wrong.
func Load(path string) (*BPE, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	b, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return b, nil
}

// LoadDir loads the tokenizer of a model package folder: tokenizer.json or
// tokenizer.json.gz, plus the special tokens and chat template of
// tokenizer_config.json(.gz) when that file is present. If dir has no
// tokenizer.json, the one subfolder whose name ends in "tokenizer" and holds
// one is used (Axera's Qwen3 packages ship qwen3_tokenizer/). It returns an
// error wrapping ErrNotFound if there is none, or more than one.
func LoadDir(dir string) (*BPE, error) {
	dir, err := findTokenizerDir(dir, "tokenizer.json")
	if err != nil {
		return nil, err
	}
	p, _ := findFile(dir, "tokenizer.json")
	b, err := Load(p)
	if err != nil {
		return nil, err
	}
	if cp, ok := findFile(dir, "tokenizer_config.json"); ok {
		data, err := readFile(cp)
		if err != nil {
			return nil, err
		}
		if err := b.applyConfig(data); err != nil {
			return nil, fmt.Errorf("%w (file %s)", err, cp)
		}
	}
	return b, nil
}

// Parse builds a tokenizer from the bytes of a tokenizer.json.
func Parse(data []byte) (*BPE, error) {
	// Sizes seen in the Qwen3 file: ~75 bytes of JSON per vocab entry and
	// merge together, ~7 bytes of token text each.
	est := len(data) / 75
	vb := vocabBuilder{arena: make([]byte, 0, 8*est), ents: make([]vocabEnt, 0, est)}
	ml := mergeList{arena: make([]byte, 0, 10*est), ents: make([]mergeEnt, 0, est)}
	topJSON, modelJSONBytes, err := walkTokenizerJSON(data, &vb, &ml)
	if err != nil {
		return nil, err
	}
	var f tokenizerFile
	if err := json.Unmarshal(topJSON, &f); err != nil {
		return nil, formatErr("tokenizer.json: %v", err)
	}
	var m modelJSON
	if err := json.Unmarshal(modelJSONBytes, &m); err != nil {
		return nil, formatErr("model: %v", err)
	}
	if m.Type != "BPE" && m.Type != "" {
		return nil, formatErr("model type %q is not supported (only BPE)", m.Type)
	}
	if m.Dropout != nil && *m.Dropout > 0 {
		return nil, formatErr("BPE dropout is not supported")
	}
	if m.ByteFallback {
		return nil, formatErr("BPE byte_fallback is not supported")
	}
	if (m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "") ||
		(m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "") {
		return nil, formatErr("BPE continuing_subword_prefix/end_of_word_suffix are not supported in byte-level files")
	}
	b := &BPE{unkID: -1, ignoreM: m.IgnoreMerges, specials: SpecialTokens{BOS: -1, EOS: -1, PAD: -1}}
	if b.nfc, err = parseNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	var byteLevel bool
	if b.steps, byteLevel, err = parsePreTokenizer(f.PreTokenizer, nil); err != nil {
		return nil, err
	}
	if !byteLevel {
		return nil, formatErr("pre_tokenizer has no ByteLevel step: only byte-level BPE is supported")
	}
	if err := parseDecoder(f.Decoder); err != nil {
		return nil, err
	}

	// Vocabulary.
	var maxID int32
	if b.vocab, maxID, err = vb.build(); err != nil {
		return nil, formatErr("model vocab: %v", err)
	}
	for _, t := range f.AddedTokens {
		if t.ID == nil || *t.ID < 0 || *t.ID > 1<<31-1 {
			return nil, formatErr("added token %q has no valid id", t.Content)
		}
		maxID = max(maxID, int32(*t.ID))
	}
	if n := len(vb.ents) + len(f.AddedTokens); int(maxID) >= 2*n+1024 {
		return nil, formatErr("token id %d is implausibly large for %d tokens", maxID, n)
	}
	if b.pieces, err = byteLevelPieces(&vb, maxID); err != nil {
		return nil, formatErr("model vocab: %v", err)
	}
	b.special = make([]bool, maxID+1)
	for i := range b.byteID {
		b.byteID[i] = -1
		if id, ok := b.vocab[string(byteToRune[i])]; ok {
			b.byteID[i] = id
		}
	}
	if m.UnkToken != nil {
		id, ok := b.vocab[*m.UnkToken]
		if !ok {
			return nil, formatErr("unk_token %q is not in the vocab", *m.UnkToken)
		}
		b.unkID = id
	}
	b.whole = make([]atomic.Uint32, maxID+1)
	if b.merges, err = ml.resolve(b.vocab, &vb, maxID); err != nil {
		return nil, formatErr("model merges: %v", err)
	}

	// Added tokens. Hugging Face tokenizers does not take their ids from the
	// file: a token already in the vocabulary keeps its id, the others are
	// numbered on from the vocabulary in file order. Files it wrote agree;
	// one that does not is refused rather than read with other ids.
	var raw, normed []addedToken
	hfIDs := map[string]int32{}
	nextID := int32(len(vb.ents))
	for _, t := range f.AddedTokens {
		want, ok := b.vocab[t.Content]
		if prev, dup := hfIDs[t.Content]; dup {
			want, ok = prev, true
		}
		if !ok {
			want = nextID
		}
		hfIDs[t.Content] = want
		nextID = max(nextID, want+1)
		if int32(*t.ID) != want {
			return nil, formatErr("added token %q has id %d, but Hugging Face tokenizers gives it %d (added token ids must follow the vocabulary)", t.Content, *t.ID, want)
		}
	}
	for _, t := range f.AddedTokens {
		if t.Content == "" {
			return nil, formatErr("added token %d has empty content", *t.ID)
		}
		if t.SingleWord {
			return nil, formatErr("added token %q: single_word is not supported", t.Content)
		}
		id := int32(*t.ID)
		// An added token with the text of a model token takes over that
		// text, as in Hugging Face tokenizers.
		b.vocab[t.Content] = id
		b.pieces[id] = t.Content
		b.special[id] = t.Special
		at := addedToken{content: t.Content, id: id, lstrip: t.LStrip, rstrip: t.RStrip}
		if t.Normalized {
			normed = append(normed, at)
		} else {
			raw = append(raw, at)
		}
	}
	b.raw = newAddedMatcher(raw)
	b.norm = newAddedMatcher(normed)
	return b, nil
}

// applyConfig reads the special tokens and the chat template from the bytes
// of a tokenizer_config.json.
func (b *BPE) applyConfig(data []byte) error {
	var c struct {
		BOS          json.RawMessage `json:"bos_token"`
		EOS          json.RawMessage `json:"eos_token"`
		PAD          json.RawMessage `json:"pad_token"`
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return formatErr("tokenizer_config.json: %v", err)
	}
	for _, f := range []struct {
		raw json.RawMessage
		dst *int
	}{{c.BOS, &b.specials.BOS}, {c.EOS, &b.specials.EOS}, {c.PAD, &b.specials.PAD}} {
		name, err := tokenName(f.raw)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		id, ok := b.vocab[name]
		if !ok {
			return formatErr("tokenizer_config.json: special token %q is not in the vocabulary", name)
		}
		*f.dst = int(id)
	}
	if !isNull(c.ChatTemplate) {
		// A plain string; the list-of-named-templates form is kept empty.
		_ = json.Unmarshal(c.ChatTemplate, &b.template)
	}
	return nil
}

// tokenName reads a special token entry: null, "text" or {"content": "text"}.
func tokenName(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var o struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return "", formatErr("tokenizer_config.json: special token %s is neither a string nor {\"content\": ...}", raw)
	}
	return o.Content, nil
}

// Encode returns the token ids of text. No special tokens are added (Qwen3
// adds none anyway); added and special tokens written in the text, such as
// <|im_start|>, are matched and become their single ids.
func (b *BPE) Encode(text string) []int {
	return b.EncodeAppend(make([]int, 0, len(text)/3+4), text)
}

// EncodeAppend appends the ids of text to dst and returns the extended
// slice. With a dst of enough capacity it does not allocate for text that is
// already NFC.
func (b *BPE) EncodeAppend(dst []int, text string) []int {
	sc := scratchPool.Get().(*scratch)
	for i := 0; i < len(text); {
		start, end, id := b.raw.next(text, i)
		seg := text[i:start]
		if b.nfc && !isNFC(seg) {
			seg = norm.NFC.String(seg)
		}
		for j := 0; j < len(seg); {
			s2, e2, id2 := b.norm.next(seg, j)
			dst = b.encodeSegment(dst, seg[j:s2], sc)
			if id2 >= 0 {
				dst = append(dst, int(id2))
			}
			j = e2
		}
		if id >= 0 {
			dst = append(dst, int(id))
		}
		i = end
	}
	scratchPool.Put(sc)
	return dst
}

// isNFC reports whether s is in NFC. Text below U+0300 (ASCII, Latin-1,
// Latin Extended) is always NFC: all of it has NFC_Quick_Check=Yes and
// combining class 0. That check does not allocate; norm's does.
func isNFC(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x80 {
			continue
		}
		// Two-byte sequences up to U+02FF start with 0xC2..0xCB.
		if c < 0xc2 || c > 0xcb || i+1 >= len(s) || s[i+1]&0xc0 != 0x80 {
			return norm.NFC.IsNormalString(s)
		}
		i++
	}
	return true
}

// encodeSegment pre-tokenizes and encodes text that holds no added token.
func (b *BPE) encodeSegment(dst []int, s string, sc *scratch) []int {
	switch {
	case len(b.steps) == 0:
		return b.encodeWord(dst, s, sc)
	case len(b.steps) == 1 && b.steps[0].next != nil:
		next := b.steps[0].next
		for i := 0; i < len(s); {
			j := next(s, i)
			dst = b.encodeWord(dst, s[i:j], sc)
			i = j
		}
		return dst
	}
	return b.encodeSteps(dst, s, sc)
}

// encodeSteps runs a pre-tokenizer of several steps (or a regexp2 step).
func (b *BPE) encodeSteps(dst []int, s string, sc *scratch) []int {
	var rec func(step int, piece string)
	rec = func(step int, piece string) {
		if step == len(b.steps) {
			dst = b.encodeWord(dst, piece, sc)
			return
		}
		b.steps[step].each(piece, func(p string) { rec(step+1, p) })
	}
	rec(0, s)
	return dst
}

// encodeWord runs BPE on one pre-token and appends its ids.
func (b *BPE) encodeWord(dst []int, w string, sc *scratch) []int {
	if len(w) == 0 {
		return dst
	}
	if len(w) == 1 && b.byteID[w[0]] >= 0 {
		return append(dst, int(b.byteID[w[0]]))
	}
	key := sc.key[:0]
	for i := 0; i < len(w); i++ {
		key = append(key, byteUTF8[w[i]][:byteUTF8Len[w[i]]]...)
	}
	sc.key = key
	if id, ok := b.vocab[string(key)]; ok && (b.ignoreM || b.isWhole(id, w, sc)) {
		return append(dst, int(id))
	}
	return b.mergeWord(dst, w, sc)
}

// isWhole reports whether BPE on the bytes of token id gives that token.
func (b *BPE) isWhole(id int32, w string, sc *scratch) bool {
	switch b.whole[id].Load() {
	case 1:
		return true
	case 2:
		return false
	}
	n := len(sc.whole)
	sc.whole = b.mergeWord(sc.whole, w, sc)
	ok := len(sc.whole) == n+1 && sc.whole[n] == int(id)
	sc.whole = sc.whole[:n]
	if ok {
		b.whole[id].Store(1)
	} else {
		b.whole[id].Store(2)
	}
	return ok
}

// mergeWord runs the merge loop on the bytes of w.
func (b *BPE) mergeWord(dst []int, w string, sc *scratch) []int {
	syms := sc.syms[:0]
	for i := 0; i < len(w); i++ {
		id := b.byteID[w[i]]
		if id < 0 {
			if b.unkID < 0 {
				continue
			}
			id = b.unkID
		}
		syms = append(syms, id)
	}
	syms = b.merges.merge(syms, sc)
	for _, id := range syms {
		dst = append(dst, int(id))
	}
	sc.syms = syms[:0]
	return dst
}

// Decode returns the text of ids. Added tokens decode to their content
// (special ones included); ids outside the vocabulary are skipped. Byte
// sequences that are not valid UTF-8 become U+FFFD, one per maximal invalid
// subpart, as in Hugging Face tokenizers.
func (b *BPE) Decode(ids []int) string {
	var buf []byte
	for _, id := range ids {
		buf = append(buf, b.piece(id)...)
	}
	return string(appendLossy(make([]byte, 0, len(buf)), buf))
}

// piece returns the bytes of one token, "" for an unknown id.
func (b *BPE) piece(id int) string {
	if id < 0 || id >= len(b.pieces) {
		return ""
	}
	return b.pieces[id]
}

// TokenBytes returns the raw bytes token id stands for (possibly part of a
// UTF-8 character), and false for an id outside the vocabulary.
func (b *BPE) TokenBytes(id int) ([]byte, bool) {
	if id < 0 || id >= len(b.pieces) {
		return nil, false
	}
	return []byte(b.pieces[id]), true
}

// TokenID returns the id of a token given in the vocabulary's own spelling
// (byte-level alphabet, e.g. "Ġthe"), or of an added token ("<|im_end|>").
func (b *BPE) TokenID(tok string) (int, bool) {
	id, ok := b.vocab[tok]
	return int(id), ok
}

// IsSpecial reports whether id is an added token marked special.
func (b *BPE) IsSpecial(id int) bool { return id >= 0 && id < len(b.special) && b.special[id] }

// VocabSize is one more than the largest token id, added tokens included
// (151,669 for Qwen3; the model's embedding table may have more rows).
func (b *BPE) VocabSize() int { return len(b.pieces) }

// Special returns the BOS/EOS/PAD ids read from tokenizer_config.json by
// LoadDir; -1 where unknown.
func (b *BPE) Special() SpecialTokens { return b.specials }

// ChatTemplate returns the Jinja chat template read from
// tokenizer_config.json by LoadDir, or "".
func (b *BPE) ChatTemplate() string { return b.template }

// AddedTokens returns the ids of all added tokens, in id order.
func (b *BPE) AddedTokens() []int {
	var ids []int
	for _, m := range []addedMatcher{b.raw, b.norm} {
		for _, t := range m.tokens {
			ids = append(ids, int(t.id))
		}
	}
	slices.Sort(ids)
	return ids
}

// StopIDs returns the ids that end a generated reply, sorted: the EOS of
// tokenizer_config.json (read by LoadDir) and whichever of <|im_end|>,
// <|endoftext|> and <end_of_utterance> are added tokens. For Qwen3 that is
// 151643 and 151645, as in its generation_config.json.
func (b *BPE) StopIDs() []int {
	var ids []int
	if b.specials.EOS >= 0 {
		ids = append(ids, b.specials.EOS)
	}
	for _, name := range []string{Qwen3IMEnd, Qwen3EndText, SmolVLM2EndOfUtterance} {
		if id, ok := b.vocab[name]; ok && b.isAdded(id) && !slices.Contains(ids, int(id)) {
			ids = append(ids, int(id))
		}
	}
	slices.Sort(ids)
	return ids
}

func (b *BPE) isAdded(id int32) bool {
	for _, m := range []*addedMatcher{&b.raw, &b.norm} {
		for _, t := range m.tokens {
			if t.id == id {
				return true
			}
		}
	}
	return false
}
